"""Rule 2 of the channel-name policy (:mod:`chada.data.channels`) for one image: names it can use.

Its own module because the dataset, the manifest checker and the policy all apply it, and the
policy itself imports the dataset's collate.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from chada.errors import InputError

__all__ = ["ChannelNameError", "add_channel_args", "validate_channel_names"]


class ChannelNameError(InputError):
    """A channel name an image cannot use: duplicated, unknown under the strict policy, or no slot left."""


def validate_channel_names(
    names: Sequence[str],
    image: str | None = None,
    case_insensitive: bool = True,
    keys: Sequence[str] | None = None,
) -> None:
    """Rule 2 for one image: at least one channel, no empty name, no name twice.

    Args:
        names: the image's channel names as written (named in the error).
        image: the image's id, named in the error.
        case_insensitive: ``"DAPI"`` and ``"dapi"`` are the same channel.
        keys: the names as compared (after aliasing and case folding); default: ``names`` stripped
            (and lower-cased when ``case_insensitive``).

    Raises:
        ChannelNameError: naming the image, the channel and its two positions.
    """
    if isinstance(names, str):
        raise TypeError("names must be a list of channel names, not one string")
    where = f"image {image!r}" if image is not None else "image"
    if len(names) == 0:
        raise ChannelNameError(f"{where} has no channels")
    if keys is None:
        keys = [str(n).strip().lower() if case_insensitive else str(n).strip() for n in names]
    seen: dict[str, int] = {}
    for pos, (key, name) in enumerate(zip(keys, names)):
        if not key:
            raise ChannelNameError(f"{where}: channel {pos} has an empty name")
        if key in seen:
            raise ChannelNameError(
                f"{where}: channel {name!r} appears twice (positions {seen[key]} and {pos}); "
                "every channel of an image needs its own name"
            )
        seen[key] = pos


def _alias(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--channel-alias takes OLD=NEW, got {text!r}")
    old, new = text.split("=", 1)
    if not old.strip() or not new.strip():
        raise argparse.ArgumentTypeError(f"--channel-alias takes OLD=NEW with both names, got {text!r}")
    return old.strip(), new.strip()


def add_channel_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--channel-order``, ``--strict-channels`` and ``--channel-alias`` to a sub-command."""
    g = parser.add_argument_group("channel names")
    g.add_argument(
        "--channel-order",
        default=None,
        metavar="A,B,C",
        help="canonical channel order: the channel named A goes to slot 0, B to slot 1, ... whatever "
        "order an image lists them in (default: the names the checkpoint recorded, else slot = position)",
    )
    g.add_argument(
        "--strict-channels",
        action="store_true",
        help="refuse images with a channel name outside the canonical order (default: warn and give it "
        "the next spare slot after the known ones)",
    )
    g.add_argument(
        "--channel-alias",
        action="append",
        type=_alias,
        default=None,
        metavar="OLD=NEW",
        help="treat channel OLD as NEW (repeatable), e.g. Hoechst=DAPI",
    )
