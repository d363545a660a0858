"""The channel-name policy: canonical slots, unknown names, duplicates, checkpoint names, CLI options."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch

from chada.data.channels import (
    ChannelNameError,
    ChannelPolicy,
    UnknownChannelWarning,
    add_channel_args,
    collate_with_policy,
    describe_channels,
    model_channel_names,
    parse_channel_order,
    policy_from_args,
)
from chada.models.hub import load_model, save_pretrained
from chada.models.registry import create_model

CANON = ["DAPI", "Actin", "Mito", "MarkerA", "MarkerB"]


def test_canonical_order_puts_each_name_in_its_slot_whatever_the_file_order():
    pol = ChannelPolicy(CANON)
    assert pol.resolve(["Mito", "dapi", "MarkerB"]) == [2, 0, 4]
    assert pol.resolve(["MarkerB", "Mito", "DAPI"]) == [4, 2, 0]
    assert pol.order(["Mito", "dapi", "MarkerB"]) == [1, 0, 2]  # positions sorted by slot


def test_positional_without_canonical_and_case_sensitivity():
    assert ChannelPolicy(None).resolve(["x", "y", "z"]) == [0, 1, 2]
    strict_case = ChannelPolicy(CANON, unknown="error", case_insensitive=False)
    with pytest.raises(ChannelNameError, match="dapi"):
        strict_case.resolve(["dapi"], image="img7")


def test_unknown_names_warn_and_take_spare_slots_after_the_known_ones():
    pol = ChannelPolicy(["DAPI", "Actin"])
    with pytest.warns(UnknownChannelWarning) as record:
        slots = pol.resolve(["Tubulin", "DAPI", "ER"], image="img1")
    assert ["Tubulin" in str(w.message) for w in record] == [True, False]
    assert "'ER'" in str(record[1].message) and "'img1'" in str(record[0].message)
    assert slots == [2, 0, 3]  # unknown channels take K, K+1, ... in image order
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownChannelWarning)
        pol.resolve(["DAPI", "ER"])  # ER already warned about: no second warning
    with pytest.warns(UnknownChannelWarning):
        assert pol.resolve(["Golgi"]) == [2]  # per image: the spare slot starts again at K


def test_strict_refuses_unknown_naming_image_and_channel():
    pol = ChannelPolicy(CANON, unknown="error")
    with pytest.raises(ChannelNameError, match=r"'img42'.*'Tubulin'"):
        pol.resolve(["DAPI", "Tubulin"], image="img42")


def test_append_grows_the_vocabulary_with_stable_slots():
    pol = ChannelPolicy(["DAPI"], unknown="append")
    assert pol.resolve(["ER", "DAPI"]) == [1, 0]
    assert pol.resolve(["Golgi", "ER"]) == [2, 1]
    assert pol.canonical == ["DAPI", "ER", "Golgi"]


def test_duplicates_refused_with_or_without_canonical_and_through_aliases():
    for pol in (ChannelPolicy(None), ChannelPolicy(CANON)):
        with pytest.raises(ChannelNameError, match=r"'img3'.*appears twice"):
            pol.resolve(["DAPI", "Actin", "dapi"], image="img3")
    aliased = ChannelPolicy(CANON, aliases={"Hoechst": "DAPI"})
    assert aliased.resolve(["hoechst", "Mito"]) == [0, 2]
    with pytest.raises(ChannelNameError, match="twice"):
        aliased.resolve(["Hoechst", "DAPI"])
    with pytest.raises(ValueError, match="twice in the canonical"):
        ChannelPolicy(["DAPI", "dapi"])


def test_slot_past_the_model_is_an_error():
    pol = ChannelPolicy(["a", "b"], max_slots=3)
    with pytest.warns(UnknownChannelWarning), pytest.raises(ChannelNameError, match="only 3 channel slots"):
        pol.resolve(["a", "x", "y"], image="im")


def test_model_recorded_names_are_used_when_no_order_is_given(tmp_path):
    model = create_model("chada_vit_test", channel_names=["Mito", "DAPI"])
    save_pretrained(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert model_channel_names(loaded) == ["Mito", "DAPI"]
    pol = ChannelPolicy.from_model(loaded)
    assert pol.canonical == ["Mito", "DAPI"] and pol.max_slots == 10
    assert pol.resolve(["DAPI", "Mito"]) == [1, 0]
    # the DINO exporter's extra["channel_vocab"] is read when the config has no names
    bare = create_model("chada_vit_test")
    save_pretrained(bare, tmp_path / "v", extra={"channel_vocab": ["Actin", "DAPI"]})
    assert ChannelPolicy.from_model(load_model(tmp_path / "v")).resolve(["DAPI"]) == [1]
    # a command-line order wins over the checkpoint
    assert ChannelPolicy.from_model(loaded, canonical=["DAPI", "Mito"]).resolve(["DAPI"]) == [0]
    assert ChannelPolicy.from_model(create_model("chada_vit_test")).positional


@pytest.mark.parametrize("attention", ["packed", "padded"])
def test_reordered_channels_give_the_same_embedding_with_a_canonical_order(attention):
    torch.manual_seed(0)
    model = create_model("chada_vit_test", attention=attention).eval()
    pol = ChannelPolicy(CANON)
    img = torch.rand(5, 32, 32)
    other = torch.rand(3, 32, 32)
    perm = [3, 0, 4, 2, 1]
    names = list(CANON)
    names_p = [names[i] for i in perm]
    with torch.no_grad():
        a = model(pol.batch([img, other], [names, ["DAPI", "Actin", "Mito"]]))
        b = model(pol.batch([img[perm], other], [names_p, ["DAPI", "Actin", "Mito"]]))
        shifted = model([img[perm], other])  # slot = position: another embedding
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a[0] - shifted[0]).abs().max() > 1e-3


def test_collate_with_policy_through_the_manifest_dataset(tmp_path):
    from chada.data import synth
    from chada.data.dataset import ManifestDataset
    from chada.data.manifest import load_manifest, write_manifest

    m = synth.generate(tmp_path / "s", n_per_assay=3, size=32, seed=0, assays=["coloc_5ch"])
    df = load_manifest(m)
    perm = [2, 4, 0, 1, 3]
    files = [f.split(";") for f in df["channel_files"]]
    names = [n.split(";") for n in df["channel_names"]]
    rev = df.copy()
    rev["channel_files"] = [";".join(f[i] for i in perm) for f in files]
    rev["channel_names"] = [";".join(n[i] for i in perm) for n in names]
    write_manifest(rev, tmp_path / "s" / "reordered.csv")
    pol = ChannelPolicy(CANON)
    model = create_model("chada_vit_test").eval()
    out = {}
    for key, path in (("orig", m), ("perm", tmp_path / "s" / "reordered.csv")):
        ds = ManifestDataset(path)
        batch = collate_with_policy([ds[i] for i in range(len(ds))], pol)
        assert batch["channel_slots"][0] == pol.resolve(batch["channel_names"][0])
        with torch.no_grad():
            out[key] = model(batch["batch"])
    torch.testing.assert_close(out["orig"], out["perm"], atol=1e-5, rtol=0)
    assert describe_channels(["DAPI", "Mito"], [0, 2]) == "DAPI@0;Mito@2"


def test_cli_options_build_the_policy():
    parser = argparse.ArgumentParser()
    add_channel_args(parser)
    model = create_model("chada_vit_test", channel_names=["Mito", "DAPI"])
    args = parser.parse_args([])
    assert policy_from_args(args, model).canonical == ["Mito", "DAPI"]
    args = parser.parse_args(["--channel-order", "DAPI, Mito;Actin", "--strict-channels",
                              "--channel-alias", "Hoechst=DAPI"])  # fmt: skip
    pol = policy_from_args(args, model)
    assert pol.canonical == ["DAPI", "Mito", "Actin"] and pol.unknown == "error"
    assert pol.resolve(["Hoechst"]) == [0]
    assert parse_channel_order("") is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--channel-alias", "nonsense"])


def test_strict_channels_without_any_order_is_an_error_that_says_how_to_give_one():
    pol = ChannelPolicy(None, unknown="error")
    with pytest.raises(ChannelNameError, match=r"--channel-order DAPI,Actin"):
        pol.resolve(["DAPI", "Actin"], image="i1")
    bare = create_model("chada_vit_test")  # records no channel order
    args = argparse.Namespace(channel_order=None, strict_channels=True, channel_alias=None)
    with pytest.raises(ChannelNameError, match="--channel-order"):
        policy_from_args(args, bare).resolve(["FooStain"])
    args.channel_order = "DAPI,FooStain"
    assert policy_from_args(args, bare).resolve(["FooStain"]) == [1]


def test_validate_channel_names_is_the_rule_resolve_applies():
    from chada.data.channels import validate_channel_names

    validate_channel_names(["DAPI", "Actin"], "ok")
    with pytest.raises(ChannelNameError, match=r"'r2'.*'dapi' appears twice \(positions 0 and 2\)"):
        validate_channel_names(["DAPI", "Actin", "dapi"], "r2")
    validate_channel_names(["DAPI", "dapi"], case_insensitive=False)
    with pytest.raises(ChannelNameError, match="empty name"):
        validate_channel_names(["DAPI", " "])
    with pytest.raises(ChannelNameError, match="no channels"):
        validate_channel_names([], "e")


# ------------------------------------------------------------------ details pinned by mutation testing
def test_policy_arguments_are_checked_with_their_messages():
    with pytest.raises(
        ValueError, match=r"^unknown must be one of \('warn', 'error', 'append'\), got 'ignore'$"
    ):
        ChannelPolicy(CANON, unknown="ignore")
    with pytest.raises(
        TypeError,
        match=r"^canonical must be a list of names; use parse_channel_order\('a,b,c'\) for a string$",
    ):
        ChannelPolicy("DAPI,Actin")
    with pytest.raises(ValueError, match=r"^max_slots must be >= 1, got 0$"):
        ChannelPolicy(None, max_slots=0)
    assert ChannelPolicy(["DAPI"], max_slots=1).resolve(["dapi"]) == [0]  # one slot is enough
    assert ChannelPolicy(["a", "b"], max_slots=2).canonical == ["a", "b"]  # as many names as slots
    with pytest.raises(ValueError, match=r"^the canonical order has 3 names but the model has 2 slots$"):
        ChannelPolicy(["a", "b", "c"], max_slots=2)
    with pytest.raises(ValueError, match=r"^the canonical channel order contains an empty name$"):
        ChannelPolicy(["a", " "])


def test_resolve_messages_name_the_image_or_say_image():
    pol = ChannelPolicy(CANON, unknown="error")
    with pytest.raises(TypeError, match=r"^names must be a list of channel names, not one string$"):
        pol.resolve("DAPI")
    with pytest.raises(ChannelNameError) as err:
        pol.resolve(["DAPI", "Tubulin"])
    assert str(err.value) == (
        f"image: channel 'Tubulin' is not in the canonical channel order {CANON} (strict channels); "
        "add it with --channel-order or map it with --channel-alias"
    )
    with pytest.raises(ChannelNameError, match=r"^image 'im3': channel 'Tubulin'"):
        pol.order(["Tubulin"], image="im3")
    with pytest.raises(ChannelNameError, match=r"^image 'b2': channel 'X'"):
        pol.resolve_many([["DAPI"], ["X"]], ["a1", "b2"])
    with pytest.raises(ValueError, match=r"^1 image ids for 2 images$"):
        pol.resolve_many([["DAPI"], ["Mito"]], ["a1"])
    with pytest.raises(ChannelNameError) as err:
        ChannelPolicy(None, unknown="error").resolve([" DAPI ", "Actin"])
    assert str(err.value) == (
        "--strict-channels needs a canonical channel order, but none was given and the model recorded none; "
        "give one with --channel-order A,B,C (e.g. --channel-order DAPI,Actin), or drop --strict-channels"
    )
    with pytest.warns(UnknownChannelWarning), pytest.raises(ChannelNameError) as err:
        ChannelPolicy(["a", "b"], max_slots=3).resolve(["a", "x", "y"], image="im")
    assert (
        str(err.value)
        == "image 'im': channels ['a', 'x', 'y'] need slot 3 but the model has only 3 channel slots (0..2)"
    )


def test_unknown_channel_warning_text_and_where_it_points():
    pol = ChannelPolicy(["DAPI", "Actin", "Mito"])
    with pytest.warns(UnknownChannelWarning) as record:
        pol.resolve(["ER"])
    assert str(record[0].message) == (
        "image: channel 'ER' is not in the canonical channel order ['DAPI', 'Actin', 'Mito']; it gets the spare "
        "slot 3 (unknown channels take slots 3, 4, ... in image order). Use --strict-channels to refuse."
    )
    # stacklevel: the warning points at the caller, not into the policy (mutmut's trampoline adds a frame
    # between the two, so "not the policy's file" is what holds under mutation testing too)
    import chada.data.channels as channels_module

    assert record[0].filename != channels_module.__file__
    with pytest.warns(UnknownChannelWarning, match=r"^image 'img9': channel 'Golgi'"):
        batch = pol.batch([torch.rand(2, 8, 8)], [["Golgi", "dapi"]], image_ids=["img9"])
    assert batch.channel_ids.tolist() == [3, 0]


def test_from_model_reads_max_channels_from_the_model_or_its_config():
    from types import SimpleNamespace

    with_prop = SimpleNamespace(max_channels=4, config=SimpleNamespace(max_channels=9, channel_names=None))
    assert ChannelPolicy.from_model(with_prop).max_slots == 4
    config_only = SimpleNamespace(config=SimpleNamespace(max_channels=6, channel_names=["A", "B"]))
    pol = ChannelPolicy.from_model(config_only)
    assert pol.max_slots == 6 and pol.canonical == ["A", "B"]
    assert ChannelPolicy.from_model(SimpleNamespace(max_channels="10")).max_slots is None
    assert ChannelPolicy.from_model(object()).max_slots is None  # e.g. the hand-made "model"
    assert ChannelPolicy.from_model(object()).case_insensitive is True
    strict_case = ChannelPolicy.from_model(
        config_only, unknown="error", case_insensitive=False, aliases={"h": "A"}
    )
    assert (strict_case.unknown, strict_case.case_insensitive, strict_case.aliases) == (
        "error",
        False,
        {"h": "A"},
    )


def test_model_channel_names_sources():
    from types import SimpleNamespace

    assert model_channel_names(object()) is None
    assert model_channel_names(SimpleNamespace(config=SimpleNamespace(channel_names=["A", 2]))) == ["A", "2"]
    assert model_channel_names(SimpleNamespace(pretrained_extra={"channel_vocab": ("X", "Y")})) == ["X", "Y"]
    assert model_channel_names(SimpleNamespace(pretrained_extra={"channel_vocab": "XY"})) is None
    assert model_channel_names(SimpleNamespace(pretrained_extra=["channel_vocab"])) is None


def test_parse_channel_order_forms():
    assert parse_channel_order(None) is None
    assert parse_channel_order("DAPI; Actin,,Mito ") == ["DAPI", "Actin", "Mito"]
    assert parse_channel_order([" DAPI", "", 3]) == ["DAPI", "3"]
    assert parse_channel_order([" "]) is None


def test_policy_from_args_without_a_model_and_with_bare_namespaces():
    args = argparse.Namespace(channel_order="B,A", strict_channels=True, channel_alias=[("h", "A")])
    pol = policy_from_args(args)
    assert (pol.canonical, pol.unknown, pol.aliases) == (["B", "A"], "error", {"h": "A"})
    assert pol.resolve(["H"]) == [1]
    bare = policy_from_args(argparse.Namespace())  # a command without the channel options
    assert (bare.canonical, bare.unknown, bare.aliases) == (None, "warn", {})
    assert policy_from_args(argparse.Namespace(), create_model("chada_vit_test")).unknown == "warn"


def test_alias_option_parsing():
    parser = argparse.ArgumentParser()
    add_channel_args(parser)
    args = parser.parse_args(["--channel-alias", " Hoechst = DAPI ", "--channel-alias", "a=b=c"])
    assert args.channel_alias == [("Hoechst", "DAPI"), ("a", "b=c")]
    from chada.data.channel_names import _alias

    for bad in ("=DAPI", "Hoechst=", " = "):
        with pytest.raises(
            argparse.ArgumentTypeError, match=rf"^--channel-alias takes OLD=NEW with both names, got '{bad}'$"
        ):
            _alias(bad)
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--channel-alias takes OLD=NEW, got 'Hoechst'$"):
        _alias("Hoechst")


def test_channel_options_help():
    parser = argparse.ArgumentParser(prog="chada embed")
    add_channel_args(parser)
    text = " ".join(parser.format_help().split())
    assert (
        "channel names: --channel-order A,B,C canonical channel order: the channel named A goes to slot 0, B to slot 1, ... whatever order an image lists them in (default: the names the checkpoint recorded, else slot = position)"
        in text
    )
    assert (
        "--strict-channels refuse images with a channel name outside the canonical order (default: warn and give it the next spare slot after the known ones)"
        in text
    )
    assert "--channel-alias OLD=NEW treat channel OLD as NEW (repeatable), e.g. Hoechst=DAPI" in text
    assert parser.parse_args([]).channel_alias is None and parser.parse_args([]).channel_order is None


def test_describe_channels_and_to_dict():
    with pytest.raises(ValueError, match=r"^2 names for 1 slots$"):
        describe_channels(["a", "b"], [0])
    pol = ChannelPolicy(["DAPI", " Actin "], unknown="append", aliases={"Hoechst": "DAPI"}, max_slots=5)
    assert pol.to_dict() == {
        "canonical": ["DAPI", "Actin"],
        "unknown": "append",
        "case_insensitive": True,
        "aliases": {"hoechst": "DAPI"},
        "max_slots": 5,
    }
    assert pol.to_dict()["canonical"] is not pol.canonical
    assert ChannelPolicy(None, case_insensitive=False).to_dict() == {
        "canonical": None, "unknown": "warn", "case_insensitive": False, "aliases": None, "max_slots": None,
    }  # fmt: skip
    assert (
        repr(pol)
        == "ChannelPolicy(canonical=['DAPI', 'Actin'], unknown='append', case_insensitive=True, max_slots=5)"
    )


def test_collate_warns_with_the_image_ids(tmp_path):
    from chada.data import synth
    from chada.data.dataset import ManifestDataset

    m = synth.generate(tmp_path / "s", n_per_assay=1, size=32, seed=0, assays=["coloc_5ch"])
    ds = ManifestDataset(m)
    sample = ds[0]
    pol = ChannelPolicy(["DAPI"])
    with pytest.warns(UnknownChannelWarning, match=rf"^image '{sample['image_id']}': channel"):
        out = collate_with_policy([sample], pol)
    assert out["batch"].channel_ids.dtype == torch.long
    assert out["batch"].channel_ids.tolist() == out["channel_slots"][0]


def test_validate_channel_names_details():
    from chada.data.channels import validate_channel_names

    with pytest.raises(TypeError, match=r"^names must be a list of channel names, not one string$"):
        validate_channel_names("DAPI")
    with pytest.raises(ChannelNameError, match=r"^image has no channels$"):
        validate_channel_names([])
    with pytest.raises(ChannelNameError) as err:
        validate_channel_names(["DAPI", " DAPI "])  # names are stripped before comparing
    assert str(err.value) == (
        "image: channel ' DAPI ' appears twice (positions 0 and 1); every channel of an image needs its own name"
    )
    with pytest.raises(ChannelNameError, match=r"^image 'r1': channel 1 has an empty name$"):
        validate_channel_names(["DAPI", ""], "r1")
    # the keys as compared (after aliasing) decide, the names as written are what the message shows
    with pytest.raises(
        ChannelNameError, match=r"^image: channel 'Hoechst' appears twice \(positions 0 and 1\)"
    ):
        validate_channel_names(["DAPI", "Hoechst"], keys=["dapi", "dapi"])
    validate_channel_names(["DAPI", "DAPI"], keys=["a", "b"])
    # case folding is str.lower(), as the policy's look-up: "Straße" and "STRASSE" are two names
    # (upper-casing would fold both to "STRASSE")
    validate_channel_names(["Straße", "STRASSE"])
    assert ChannelPolicy().resolve(["Straße", "STRASSE"]) == [0, 1]
