"""Channel reconstruction (the paper's BBBC021 protocol, supplementary Section E).

The encoder is frozen and fed every channel of an image except ``target_channel``; a decoder of
2 fully-connected layers + 5 convolution layers + sigmoid predicts the target channel from the CLS
embedding alone. The paper scales the decoder so that every compared encoder gets the same decoder
size (~5.2 M parameters); :func:`size_decoder` does that for ANY embedding dim: the convolution stack
depends only on the image size, and the hidden width of the first fully-connected layer is solved so
that the total is ``target_params`` (rounding error <= ``(D + 1 + c0 * s0^2) / 2`` parameters: at 224 px
under 0.2 % for D <= 1920; with the 32-px auto budget of 106 k under 1 % for D up to ~1600;
:func:`run_reconstruction_task` warns when the encoders of a task differ by more than 1 %).

Decoder shape (image ``H x W``; ``u`` upsamplings, 5 unless the image is small; ``s0 = ceil(max(H, W) / 2^u)``;
widths ``c0, c0/2, ...``)::

    cls [B, D] -> Linear(D, h) -> ReLU -> Linear(h, c0*s0*s0) -> ReLU -> [B, c0, s0, s0]
      -> 5 x Conv3x3 (the first u preceded by a nearest upsample x2) with ReLU between
         (channels c0 -> c0/2 -> ... -> 1, hidden widths at least 8; He-initialised)
      -> resize to [H, W] (only when H, W are not s0 * 2^u) -> sigmoid -> [B, 1, H, W]

At 224 px this is the paper's layout (u = 5, a 7 x 7 seed). For small images ``u`` drops until the
seed grid is at least ``min_seed`` (4) wide, because a 1 x 1 seed (32 px with u = 5) carries no
spatial layout: nearest upsampling copies it and only the zero padding could break the symmetry.
32 px: u = 3, s0 = 4; 64 px: u = 4, s0 = 4; >= 97 px: u = 5.

Small images (``target_params`` / ``base_channels`` ``"auto"`` in the config, :func:`decoder_budget`):
the paper's budget per output pixel is kept, ``target_params = 5.2e6 * H * W / 224^2`` (32 px: 106 k),
and ``base_channels = 256 * max(H, W) / 224`` rounded to a power of two in [16, 256] (32 px: 32),
so that the conv stack stays a small part of the budget as at 224 px.

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
    "fit_decoder",
    "parse_reconstruction_tasks",
    "plot_reconstruction_examples",
    "reconstruction_metrics",
    "run_channel_reconstruction",
    "run_reconstruction_task",
    "size_decoder",
]
