"""Channel reconstruction (the paper's BBBC021 protocol, supplementary Section E).

The encoder is frozen and fed every channel of an image except ``target_channel``; a decoder of
2 fully-connected layers + 5 convolution layers + sigmoid predicts the target channel from the CLS
embedding alone. The paper scales the decoder so that every compared encoder gets the same decoder
size (~5.2 M parameters): :func:`size_decoder` does that for any embedding dim, and
:mod:`.decoder` describes the decoder's shape, its small-image layout and the budget per pixel
(:func:`run_reconstruction_task` warns when the encoders of a task differ by more than 1 %).

Targets are mapped to [0, 1] with the training targets' global 0.1 / 99.9 % percentiles (then
clipped), because the sigmoid output lives there; MSE, MAE and R2 are computed on the flattened
target channel over the whole test set in that space, in one pass (R2 = 1 - SSE / SST around the
test set's global mean, i.e. scikit-learn's ``r2_score`` on the flattened arrays). The "chance"
reference is the same metrics for a constant prediction of the training targets' mean (R2 ~ 0).
Because the encoder is frozen and there is no augmentation, embeddings are computed once.

Config-driven runs (``chada evaluate --config``, section ``reconstruction:``) are parsed by
:func:`parse_reconstruction_tasks` and run by :func:`run_reconstruction_task`: the manifest is read
once, every model encodes it once, then one decoder is trained per model and seed.

Modules: :mod:`.decoder` (the sized decoder), :mod:`.fit` (one decoder on embeddings, and the Python
API :func:`run_channel_reconstruction`), :mod:`.config` (the config section and result types),
:mod:`.task` (a config task end to end), :mod:`.figure` (the Fig. 16-style picture).
"""


from chada.tasks.reconstruction.config import (
    ReconstructionExamples,
    ReconstructionModelSpec,
    ReconstructionOutcome,
    ReconstructionTask,
    parse_reconstruction_tasks,
)
from chada.tasks.reconstruction.decoder import (
    ChannelDecoder,
    DecoderSpec,
    build_decoder,
    decoder_budget,
    size_decoder,
)
from chada.tasks.reconstruction.figure import plot_reconstruction_examples
from chada.tasks.reconstruction.fit import (
    DecoderFit,
    encode_without_channel,
    fit_decoder,
    reconstruction_metrics,
    run_channel_reconstruction,
)
from chada.tasks.reconstruction.task import run_reconstruction_task

__all__ = [
    "ChannelDecoder",
    "DecoderSpec",
    "ReconstructionExamples",
    "ReconstructionModelSpec",
    "ReconstructionOutcome",
    "ReconstructionTask",
    "build_decoder",
    "decoder_budget",
    "encode_without_channel",
    "DecoderFit",
    "fit_decoder",
    "parse_reconstruction_tasks",
    "plot_reconstruction_examples",
    "reconstruction_metrics",
    "run_channel_reconstruction",
    "run_reconstruction_task",
    "size_decoder",
]
