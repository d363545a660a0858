"""The quickstart's console: warnings of spawned pretraining processes arrive as one line that names
the encoder, with no source line, and the One-Channel ViT's pool warning is left to the embed stage."""

from __future__ import annotations

import logging
import multiprocessing as mp
import warnings

from chada.pipeline.console import encoder_warnings, quickstart_console, worker_logging


def _job() -> None:
    with encoder_warnings("one_channel_vit"):
        warnings.warn("step 510: the teacher looks collapsed (uniform)", RuntimeWarning, stacklevel=2)
    logging.getLogger("chada.encode.encoders").warning(
        "pool %r of %s concatenates one block per channel, but ...", "cls", "OneChannelViT"
    )


def test_worker_warnings_reach_the_parent_as_one_named_line(capsys):
    with quickstart_console() as queue:
        with mp.get_context("spawn").Pool(1, initializer=worker_logging, initargs=(queue,)) as pool:
            pool.apply(_job)
        warnings.warn("in the parent", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    lines = sorted(line for line in err.splitlines() if line.strip())  # the queue is read by another thread
    assert lines == [
        "chada quickstart: warning: in the parent",
        "chada quickstart: warning: pretrain one_channel_vit: RuntimeWarning: step 510: the teacher looks "
        "collapsed (uniform)",
    ], err
    # Outside the block the logger and warnings are as they were.
    assert not logging.getLogger("chada").handlers
