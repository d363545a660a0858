"""The channel-name policy: which channel-embedding slot each named channel of an image goes to.

ChAda-ViT adds a learned channel embedding ``channel_embed[slot]`` to every token of a channel, so the
slot is the model's only notion of *which stain* a channel is. The paper's rule is "slot = position
in the image"; that breaks as soon as two datasets list their stains in different orders, or an image
lacks a stain. A :class:`ChannelPolicy` maps names to slots instead.

Rules (exactly what :meth:`ChannelPolicy.resolve` does):

1. Names are stripped; matching is case-insensitive unless ``case_insensitive=False``; ``aliases``
   (``{"Hoechst": "DAPI"}``) rename a channel before the look-up.
2. A name occurring twice in one image (after aliasing and case folding) is refused with
   :class:`ChannelNameError` (it names the image and the channel): two channels cannot share a slot.
   So is an image without channels or with an empty name. :func:`validate_channel_names` is this
   rule alone; ``chada data check`` uses it, so it refuses what ``chada embed`` refuses.
3. ``canonical=None``: slot = position (``0..C-1``), the paper's rule; only rule 2 applies (too
   many channels is left to the model's own check). ``unknown="error"``
   (``--strict-channels``) checks names against what the model knows: without a canonical order,
   the stains it saw in pretraining (``seen``: ``pretrained_extra["channel_names_seen"]``), naming
   the first unseen one; a model that records neither cannot be checked, so
   :meth:`ChannelPolicy.resolve` refuses to run and says to give one with ``--channel-order A,B,C``.
4. ``canonical=[n_0, n_1, ...]``: a known name ``n_j`` goes to slot ``j`` whatever its position in
   the image, so ``[Actin, DAPI]`` and ``[DAPI, Actin]`` give the same slots per stain.
5. Unknown names (not in ``canonical``) follow ``unknown``:

   - ``"warn"`` (default): a warning (once per name and policy), then the image's unknown channels
     take the slots ``K, K+1, ...`` (``K = len(canonical)``) in the order the image lists them. The
     slot is per image: two different unseen stains in two images may share slot ``K``, exactly like
     the paper's positional rule for channels the model never saw.
   - ``"error"`` (``--strict-channels``): :class:`ChannelNameError` naming the image and the channel.
   - ``"append"``: the name joins the canonical list for good (silently) and keeps that slot for
     every later image: stable slots for a vocabulary discovered while reading, in first-seen order.

6. With a canonical order, a slot ``>= max_slots`` (the model's ``max_channels``, when known) is an
   error naming the image.

:meth:`ChannelPolicy.from_model` reads the canonical order a checkpoint recorded: ``config.channel_names``
(set by DINO pretraining with a channel vocabulary), else ``pretrained_extra["channel_vocab"]``; a
model that recorded none keeps the positional rule. Command lines get ``--channel-order a,b,c``,
``--strict-channels`` and ``--channel-alias OLD=NEW`` from :func:`add_channel_args`, and
:func:`policy_from_args` builds the policy (the command-line order wins over the checkpoint's).
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

# add_channel_args lives beside the names so that argument parsing (chada --help) needs no torch.
from chada.data.channel_names import ChannelNameError, add_channel_args, validate_channel_names
from chada.models.batch import ChannelBatch

__all__ = [
    "UNKNOWN_POLICIES",
    "ChannelNameError",
    "ChannelPolicy",
    "UnknownChannelWarning",
    "add_channel_args",
    "collate_with_policy",
    "describe_channels",
    "model_channel_names",
    "parse_channel_order",
    "policy_from_args",
    "validate_channel_names",
]

UNKNOWN_POLICIES = ("warn", "error", "append")


class UnknownChannelWarning(UserWarning):
    """A channel name outside the canonical order was given a spare slot."""


def parse_channel_order(text: str | Sequence[str] | None) -> list[str] | None:
    """``"DAPI,Actin, Mito"`` (or ``;``-separated, or a list) -> ``["DAPI", "Actin", "Mito"]``; empty -> None."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.replace(";", ",").split(",")
    else:
        parts = [str(p) for p in text]
    names = [p.strip() for p in parts if p.strip()]
    return names or None


def model_channel_names(model: Any) -> list[str] | None:
    """The canonical channel order a model recorded at pretraining, or None.

    Looks at ``model.config.channel_names`` first, then ``model.pretrained_extra["channel_vocab"]``
    (what :meth:`chada.ssl.trainer.Trainer.export` writes). ``channel_names_seen`` is *not* used:
    it lists the corpus' stains, but a run without a vocabulary trained slot = position.
    """
    cfg = getattr(model, "config", None)
    names = getattr(cfg, "channel_names", None)
    if names:
        return [str(n) for n in names]
    extra = getattr(model, "pretrained_extra", None) or {}
    vocab = extra.get("channel_vocab") if isinstance(extra, Mapping) else None
    if vocab and not isinstance(vocab, str):
        return [str(n) for n in vocab]
    return None


class ChannelPolicy:
    """Channel names -> channel-embedding slots (rules in the module docstring).

    Args:
        canonical: canonical slot order, or None for slot = position.
        unknown: ``"warn"``, ``"error"`` or ``"append"`` for names outside ``canonical``.
        case_insensitive: match names ignoring case.
        aliases: ``{name as written in a manifest: canonical name}``, applied before matching.
        max_slots: largest slot + 1 the model accepts (its ``max_channels``); None = unchecked.
        seen: the stains the model saw in pretraining; with no ``canonical`` order, strict mode
            (``unknown="error"``) refuses any other name (slots stay positional).
    """

    def __init__(
        self,
        canonical: Sequence[str] | None = None,
        unknown: str = "warn",
        case_insensitive: bool = True,
        aliases: Mapping[str, str] | None = None,
        max_slots: int | None = None,
        seen: Sequence[str] | None = None,
    ) -> None:
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}")
        if isinstance(canonical, str):
            raise TypeError(
                "canonical must be a list of names; use parse_channel_order('a,b,c') for a string"
            )
        if max_slots is not None and max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.unknown = unknown
        self.case_insensitive = case_insensitive
        self.max_slots = max_slots
        self.aliases = {self._key(k): str(v).strip() for k, v in (aliases or {}).items()}
        self.canonical: list[str] | None = None
        self._slots: dict[str, int] = {}
        self._warned: set[str] = set()
        # the stains the model saw in pretraining: what strict mode checks when there is no slot order
        self.seen = None if seen is None else [str(n).strip() for n in seen]
        if canonical is not None:
            self.canonical = []
            for name in canonical:
                key = self._key(name)
                if not key:
                    raise ValueError("the canonical channel order contains an empty name")
                if key in self._slots:
                    raise ValueError(
                        f"channel {name!r} appears twice in the canonical order {list(canonical)}"
                    )
                self._slots[key] = len(self.canonical)
                self.canonical.append(str(name).strip())
            if max_slots is not None and len(self.canonical) > max_slots:
                raise ValueError(
                    f"the canonical order has {len(self.canonical)} names but the model has {max_slots} slots"
                )

    # -------------------------------------------------------------------------- construction
    @classmethod
    def from_model(
        cls,
        model: Any,
        unknown: str = "warn",
        case_insensitive: bool = True,
        aliases: Mapping[str, str] | None = None,
        canonical: Sequence[str] | None = None,
    ) -> ChannelPolicy:
        """A policy using the model's recorded channel names (unless ``canonical`` overrides them).

        ``max_slots`` is the model's ``max_channels`` when it has one (None for ``"handmade"``).
        """
        names = list(canonical) if canonical is not None else model_channel_names(model)
        extra = getattr(model, "pretrained_extra", None) or {}
        seen = extra.get("channel_names_seen") if isinstance(extra, Mapping) else None
        cmax = getattr(model, "max_channels", None)
        if not isinstance(cmax, int):
            cmax = getattr(getattr(model, "config", None), "max_channels", None)
        return cls(
            names,
            unknown=unknown,
            case_insensitive=case_insensitive,
            aliases=aliases,
            max_slots=cmax if isinstance(cmax, int) else None,
            seen=list(seen) if isinstance(seen, list) and seen else None,
        )

    # -------------------------------------------------------------------------------- lookup
    def _key(self, name: str) -> str:
        key = str(name).strip()
        return key.lower() if self.case_insensitive else key

    def canonical_name(self, name: str) -> str:
        """``name`` after stripping and aliasing (the spelling used for look-ups and reports)."""
        clean = str(name).strip()
        return self.aliases.get(self._key(clean), clean)

    @property
    def positional(self) -> bool:
        """True when slots follow positions (no canonical order)."""
        return self.canonical is None

    def resolve(self, names: Sequence[str], image: str | None = None) -> list[int]:
        """Slot of each channel of one image, in the image's channel order.

        Args:
            names: the image's channel names (length C).
            image: the image's id, used in error messages and warnings.

        Raises:
            ChannelNameError: duplicated name, unknown name under ``unknown="error"``, or a slot past
                ``max_slots``.
        """
        if isinstance(names, str):
            raise TypeError("names must be a list of channel names, not one string")
        where = f"image {image!r}" if image is not None else "image"
        mapped = [self.canonical_name(n) for n in names]
        keys = [self._key(n) for n in mapped]
        validate_channel_names(names, image, keys=keys)
        if self.canonical is None:
            if self.unknown == "error" and self.seen is not None:
                self._refuse_unseen(mapped, keys, where)
            elif self.unknown == "error":
                raise ChannelNameError(
                    "--strict-channels needs a canonical channel order, but none was given and the model "
                    "recorded none; give one with --channel-order A,B,C (e.g. --channel-order "
                    f"{','.join(str(n).strip() for n in names)}), or drop --strict-channels"
                )
            slots = list(range(len(names)))
        else:
            slots = []
            spare = len(self.canonical)
            for key, name in zip(keys, mapped):
                if key in self._slots:
                    slots.append(self._slots[key])
                    continue
                if self.unknown == "error":
                    raise ChannelNameError(
                        f"{where}: channel {name!r} is not in the canonical channel order {self.canonical} "
                        "(strict channels); add it with --channel-order or map it with --channel-alias"
                    )
                if self.unknown == "append":
                    self._slots[key] = len(self.canonical)
                    self.canonical.append(name)
                    slots.append(self._slots[key])
                    continue
                if key not in self._warned:
                    self._warned.add(key)
                    warnings.warn(
                        f"{where}: channel {name!r} is not in the canonical channel order {self.canonical}; "
                        f"it gets the spare slot {spare} (unknown channels take slots {len(self.canonical)}, "
                        f"{len(self.canonical) + 1}, ... in image order). Use --strict-channels to refuse.",
                        UnknownChannelWarning,
                        stacklevel=2,
                    )
                slots.append(spare)
                spare += 1
        # positional slots past the model are "too many channels": the model's own check says it best
        # (a fixed-channel model needs exactly max_slots channels, which is not this rule)
        if self.canonical is not None and self.max_slots is not None and max(slots) >= self.max_slots:
            raise ChannelNameError(
                f"{where}: channels {list(names)} need slot {max(slots)} but the model has only "
                f"{self.max_slots} channel slots (0..{self.max_slots - 1})"
            )
        return slots

    def _refuse_unseen(self, mapped: Sequence[str], keys: Sequence[str], where: str) -> None:
        """Strict mode without a slot order: every name must be a stain the model saw in pretraining."""
        seen = {self._key(self.canonical_name(n)) for n in self.seen or []}
        for key, name in zip(keys, mapped):
            if key not in seen:
                raise ChannelNameError(
                    f"{where}: channel {name!r} is not among the stains the model saw in pretraining "
                    f"{self.seen} (strict channels); map it with --channel-alias or drop --strict-channels"
                )

    def resolve_many(
        self, names: Sequence[Sequence[str]], images: Sequence[str] | None = None
    ) -> list[list[int]]:
        """:meth:`resolve` for every image of a batch."""
        if images is not None and len(images) != len(names):
            raise ValueError(f"{len(images)} image ids for {len(names)} images")
        return [self.resolve(n, None if images is None else images[i]) for i, n in enumerate(names)]

    def order(self, names: Sequence[str], image: str | None = None) -> list[int]:
        """Positions of the image's channels sorted by slot (to list them in canonical order)."""
        slots = self.resolve(names, image)
        return sorted(range(len(slots)), key=lambda i: slots[i])

    def batch(
        self, images: Sequence[Tensor], names: Sequence[Sequence[str]], image_ids: Sequence[str] | None = None
    ) -> ChannelBatch:
        """A :class:`ChannelBatch` of ``[C_i, H, W]`` images whose ``channel_ids`` are the resolved slots."""
        return ChannelBatch.from_images(list(images), channel_ids=self.resolve_many(names, image_ids))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded next to embeddings)."""
        return {
            "canonical": None if self.canonical is None else list(self.canonical),
            "unknown": self.unknown,
            "case_insensitive": self.case_insensitive,
            "aliases": dict(self.aliases) or None,
            "max_slots": self.max_slots,
        }

    def __repr__(self) -> str:
        return (
            f"ChannelPolicy(canonical={self.canonical}, unknown={self.unknown!r}, "
            f"case_insensitive={self.case_insensitive}, max_slots={self.max_slots})"
        )


def describe_channels(names: Sequence[str], slots: Sequence[int]) -> str:
    """``"DAPI@0;Actin@2"``: one image's channels with their slots, for reports and manifests."""
    if len(names) != len(slots):
        raise ValueError(f"{len(names)} names for {len(slots)} slots")
    return ";".join(f"{n}@{s}" for n, s in zip(names, slots))


def collate_with_policy(samples: Sequence[dict[str, Any]], policy: ChannelPolicy) -> dict[str, Any]:
    """:func:`chada.data.dataset.collate_channels` with the slots from ``policy``.

    Returns the same keys plus ``channel_slots`` (list of per-image slot lists); ``batch.channel_ids``
    holds the same slots, stacked ``[sum C_i]``.
    """
    from chada.data.dataset import collate_channels

    out = collate_channels(samples)
    slots = policy.resolve_many([s["channel_names"] for s in samples], [str(s["image_id"]) for s in samples])
    b = out["batch"]
    ids = torch.tensor([x for s in slots for x in s], dtype=torch.long, device=b.pixels.device)
    out["batch"] = ChannelBatch(b.pixels, b.counts, ids)
    out["channel_slots"] = slots
    return out


# ---------------------------------------------------------------------------------------- CLI
def policy_from_args(args: argparse.Namespace, model: nn.Module | Any | None = None) -> ChannelPolicy:
    """The :class:`ChannelPolicy` of parsed :func:`add_channel_args` options for ``model``.

    ``--channel-order`` wins over the checkpoint's recorded names; without either, slot = position.
    """
    order = parse_channel_order(getattr(args, "channel_order", None))
    unknown = "error" if getattr(args, "strict_channels", False) else "warn"
    aliases = dict(getattr(args, "channel_alias", None) or [])
    if model is None:
        return ChannelPolicy(order, unknown=unknown, aliases=aliases)
    return ChannelPolicy.from_model(model, unknown=unknown, aliases=aliases, canonical=order)
