"""A streamed dataset whose connection fails mid-run (issue 30 sec. 5): the stream is opened again and the rows
already read are passed over, so a run that rode out failures ends with the same weights as one that had none; when
the retries are spent, the run saves a checkpoint at its last finished step, says how to go on, and the resumed run
ends with the same weights too. The failures are raised where the network would raise them: by ``decode`` of a
remote image (a ConnectionError, as huggingface_hub and httpx raise theirs after their own retries), counted by
call, in this process (the loopback Hub's own fault injection goes through huggingface_hub's retries, 23 s a time)."""

import pytest
import torch

from helpers import cli_in_process, png_folder, read_history, read_weights

COMMON = ["--max_train_steps", "6", "--checkpointing_steps", "100", "--eval_split", "", "--num_sample_images", "1",
          "--streaming", "--resolution", "8", "--train_batch_size", "4", "--ddpm_num_steps", "20",
          "--ddpm_num_inference_steps", "3", "--unet_preset", "cpu-8-small", "--logger", "none"]


class FlakyDecode:
    """``decode`` that raises ConnectionError on the calls numbered in ``fail_on`` (1-based), else decodes."""

    def __init__(self, real, fail_on):
        self.real, self.fail_on, self.calls, self.failed = real, set(fail_on), 0, 0

    def __call__(self, value):
        self.calls += 1
        if self.calls in self.fail_on:
            self.failed += 1
            raise ConnectionError("Server disconnected without sending a response.")
        return self.real(value)


@pytest.fixture
def images(tmp_path):
    return png_folder(tmp_path / "images", n=10, size=(8, 8), mode="L")


def _train(capsys, out, images, *extra):
    return cli_in_process(capsys, "train", "--train_data_dir", images, "--output_dir", out, *COMMON, *extra)


def _same_run(a, b):
    wa, wb = read_weights(a), read_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h["loss"] for h in read_history(a)] == [h["loss"] for h in read_history(b)]


@pytest.mark.slow  # three 6-step runs, about 30 s
def test_a_stream_that_fails_twice_is_retried_to_the_same_run(tmp_path, images, capsys, monkeypatch):
    import ddpm_hf.data.batches as batches

    code, _, err = _train(capsys, tmp_path / "clean", images)
    assert code == 0, err[-2000:]
    monkeypatch.setattr(batches.StreamBatches, "retry_wait", 0.01)
    flaky = FlakyDecode(batches.decode, fail_on={7, 8, 15})  # twice in a row in epoch 1, once in epoch 2
    monkeypatch.setattr(batches, "decode", flaky)
    code, _, err = _train(capsys, tmp_path / "flaky", images)
    assert code == 0, err[-2000:]
    assert flaky.failed == 3 and err.count("warning: the stream failed at image") == 3
    assert "ConnectionError: Server disconnected" in err and "(2 of 5)" in err
    _same_run(tmp_path / "clean", tmp_path / "flaky")  # the same images in the same order: the same weights


@pytest.mark.slow  # four short runs, about 40 s
def test_spent_retries_save_a_checkpoint_and_the_resumed_run_is_the_same(tmp_path, images, capsys, monkeypatch):
    import ddpm_hf.data.batches as batches

    code, _, err = _train(capsys, tmp_path / "clean", images)
    assert code == 0, err[-2000:]
    monkeypatch.setattr(batches.StreamBatches, "retry_wait", 0.01)
    monkeypatch.setattr(batches.StreamBatches, "retries", 2)
    real = batches.decode
    # rows 1-4 and 5-8 make steps 1 and 2 (batch 4); from the 9th call on every read fails: step 3 cannot finish
    monkeypatch.setattr(batches, "decode", FlakyDecode(real, fail_on=range(9, 100)))
    out = tmp_path / "cut"
    code, _, err = _train(capsys, out, images)
    message = [line for line in err.replace("\r", "\n").splitlines() if "ddpm-hf train: error:" in line][-1]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert ("ddpm-hf train: error: the streamed dataset's connection failed 3 times in a row (ConnectionError: "
            "Server disconnected without sending a response.); saved checkpoint-2: run again with "
            "--resume_from_checkpoint latest to go on") == message
    assert (out / "checkpoint-2").is_dir() and [h["step"] for h in read_history(out)] == [1, 2]
    monkeypatch.setattr(batches, "decode", real)  # the connection is back
    code, printed, err = _train(capsys, out, images, "--resume_from_checkpoint", "latest")
    assert code == 0 and "resumed from" in printed + err, err[-2000:]
    _same_run(tmp_path / "clean", out)
