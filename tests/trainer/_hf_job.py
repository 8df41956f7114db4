"""The Hugging Face example job as the tests run it (a script: ``python _hf_job.py``, under
torchrun or alone): ``examples/hf_trainer.py`` sized by ``HF_JOB_*`` variables, plus a pause
the test controls so that each resize lands on a step it chose.

``HF_JOB_PAUSE_FILE`` holds step numbers: every rank that has just completed one of them waits
there until it is told to stop (SIGTERM: it then writes ``<pause file>.released-<rank>-<step>``
and goes on to the step boundary where the job stops) or until the step leaves the file.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer.py"


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("hf_trainer_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PauseAtStep(TrainerCallback):
    """Waits after the step named in the pause file (runs after the elastic callback)."""

    def __init__(self, trainer: Any, path: Path) -> None:
        self.trainer = trainer
        self.path = path

    def _pause_steps(self) -> set[int]:
        try:
            return {int(step) for step in self.path.read_text().split()}
        except (OSError, ValueError):
            return set()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        session = self.trainer.elastic.session
        step = state.global_step
        while step in self._pause_steps():
            if session.signalled:
                Path(f"{self.path}.released-{session.rank}-{step}").touch()
                return
            time.sleep(0.05)


def main() -> None:
    example = _load_example()
    trainer = example.build_trainer(
        samples=int(os.environ["HF_JOB_SAMPLES"]),
        global_batch_size=int(os.environ["HF_JOB_GLOBAL_BATCH"]),
        epochs=int(os.environ["HF_JOB_EPOCHS"]),
        loader_workers=int(os.environ.get("HF_JOB_LOADER_WORKERS", "0")),
        output_dir=os.environ["HF_JOB_OUTPUT_DIR"],
    )
    if os.environ.get("HF_JOB_PAUSE_FILE"):
        trainer.add_callback(PauseAtStep(trainer, Path(os.environ["HF_JOB_PAUSE_FILE"])))
    trainer.train()


if __name__ == "__main__":
    main()
