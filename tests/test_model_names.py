"""Model names (DESIGN §2c): catalog names are bound to their bytes, other names are labels."""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inferad.admission import JobRejected, check_model, check_served
from inferad.client import model_ref
from inferad.models import (
    CATALOG,
    AmbiguousModel,
    LocalModel,
    ModelError,
    ModelMismatch,
    NamedModel,
    UnknownModel,
    check_label,
    file_label,
    gguf_label,
    name_models,
    naming_note,
    resolve,
    resolve_name,
    split_name,
)
from p2p import wire
from tests.factories import make_job

GEMMA = CATALOG["gemma-3-270m"].sha256
A, B, C = "a" * 64, "b" * 64, "c" * 64


def test_a_catalog_name_labels_only_its_pinned_sha256_and_other_names_anything():
    check_label("gemma-3-270m", GEMMA)
    with pytest.raises(ModelMismatch, match="catalog name, pinned to sha256 a5fd3b62"):
        check_label("gemma-3-270m", A)
    check_label("my-finetune", A)
    check_label("my-finetune", GEMMA)


def test_a_local_file_is_labelled_by_its_stem_unless_that_would_impersonate_a_catalog_model():
    assert file_label("my-finetune", A) == "my-finetune"
    assert file_label("gemma-3-270m", A) == "gemma-3-270m-aaaaaaaa"
    assert file_label("gemma-3-270m", GEMMA) == "gemma-3-270m"
    assert file_label("renamed-copy", GEMMA) == "gemma-3-270m"  # the catalog's bytes under any file name
    for stem in ("my-finetune", "gemma-3-270m", "renamed-copy"):
        for sha in (A, GEMMA):
            check_label(file_label(stem, sha), sha)


def test_the_node_log_says_why_a_file_is_served_under_another_name():
    assert naming_note(LocalModel("tiny", Path("/m/tiny.gguf"), A)) is None
    note = naming_note(LocalModel("gemma-3-270m-aaaaaaaa", Path("/m/gemma-3-270m.gguf"), A))
    assert "served as gemma-3-270m-aaaaaaaa" in note and "--model gemma-3-270m" in note
    assert "is catalog model gemma-3-270m" in naming_note(LocalModel("gemma-3-270m", Path("/m/x.gguf"), GEMMA))


def test_resolve_labels_an_impostor_file_by_its_sha_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("INFERAD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "gemma-3-270m.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    local = resolve(str(path))
    assert local.sha256 != GEMMA and local.name == f"gemma-3-270m-{local.sha256[:8]}"
    assert model_ref(str(path)) == wire.ModelRef(sha256=local.sha256, name=local.name)


@pytest.mark.parametrize("name, parts", [
    ("tiny", ("tiny", None)),
    (f"tiny@{A}", ("tiny", A)),
    (f"a@b@{A}", ("a@b", A)),
    (A.upper(), (None, A)),
    ("tiny@abc", ("tiny@abc", None)),
    (f"@{A}", (f"@{A}", None)),
])
def test_a_name_is_a_label_a_sha256_or_label_at_sha256(name, parts):
    assert split_name(name) == parts


def test_a_catalog_name_resolves_to_its_pin_whatever_peers_offer_under_it():
    impostor = [(A, "gemma-3-270m")]
    assert resolve_name("gemma-3-270m", impostor) == NamedModel(GEMMA, "gemma-3-270m", "gemma-3-270m")
    assert resolve_name("gemma-3-270m", []) == NamedModel(GEMMA, "gemma-3-270m", "gemma-3-270m")


def test_a_label_two_files_share_is_ambiguous_and_lists_every_label_at_sha256():
    offers = [(A, "tiny"), (B, "tiny"), (B, "tiny"), (C, "other")]
    with pytest.raises(AmbiguousModel) as raised:
        resolve_name("tiny", offers)
    assert raised.value.choices == [f"tiny@{A}", f"tiny@{B}"]
    assert f"tiny@{A}" in str(raised.value) and f"tiny@{B}" in str(raised.value)
    assert resolve_name(f"tiny@{B}", offers) == NamedModel(B, "tiny", f"tiny@{B}")
    assert resolve_name(A.upper(), offers) == NamedModel(A, "tiny", f"tiny@{A}")
    assert resolve_name("other", offers) == NamedModel(C, "other", "other")


def test_a_label_nobody_offers_is_unknown_and_the_error_says_how_to_name_models():
    with pytest.raises(UnknownModel, match="label@sha256"):
        resolve_name("nobody", [(A, "tiny")])


def test_label_at_sha256_and_a_bare_sha256_name_a_file_even_before_anyone_offers_it():
    assert resolve_name(f"mine@{A}", []) == NamedModel(A, "mine", f"mine@{A}")
    assert resolve_name(A, []) == NamedModel(A, A[:12], f"{A[:12]}@{A}")
    assert resolve_name(GEMMA, []) == NamedModel(GEMMA, "gemma-3-270m", "gemma-3-270m")
    assert resolve_name(f"gemma-3-270m@{GEMMA}", []).sha256 == GEMMA
    with pytest.raises(ModelMismatch):
        resolve_name(f"gemma-3-270m@{A}", [])


def test_the_listing_has_one_entry_per_file_and_drops_impostor_offers():
    offers = [(GEMMA, "gemma-3-270m"), (A, "gemma-3-270m"), (B, "tiny"), (C, "tiny"), (C, "tiny-copy")]
    named = name_models(offers)
    assert set(named) == {GEMMA, B, C}
    assert named[GEMMA] == NamedModel(GEMMA, "gemma-3-270m", "gemma-3-270m")
    assert named[B].id == f"tiny@{B}" and named[C].id == f"tiny@{C}"


def test_a_file_offered_under_several_labels_is_listed_under_the_most_common_one():
    named = name_models([(A, "x"), (A, "y"), (A, "y"), (B, "z")])
    assert named[A] == NamedModel(A, "y", "y")
    assert resolve_name("x", [(A, "x"), (A, "y"), (A, "y")]).sha256 == A


@given(st.lists(st.tuples(st.sampled_from([A, B, C, GEMMA]), st.sampled_from(["p", "q", "gemma-3-270m"])),
                max_size=12))
def test_every_listed_id_resolves_back_to_its_own_file(offers):
    for sha, named in name_models(offers).items():
        assert resolve_name(named.id, offers).sha256 == sha
        check_label(named.label, sha)


def test_gateways_and_workers_refuse_a_job_that_puts_a_catalog_name_on_other_bytes():
    job = make_job(model=wire.ModelRef(sha256=A, name="gemma-3-270m"))
    with pytest.raises(JobRejected) as raised:
        check_model(job.model)
    assert raised.value.code == "model_mismatch"
    with pytest.raises(JobRejected) as raised:
        check_served(job, served={A: object()}, max_tokens=64)  # even by a node that holds those bytes
    assert raised.value.code == "model_mismatch"
    check_model(wire.ModelRef(sha256=A, name="tiny"))


def test_the_cli_names_models_the_same_way():
    assert model_ref("gemma-3-270m") == wire.ModelRef(sha256=GEMMA, name="gemma-3-270m")
    assert model_ref(f"tiny@{A}") == wire.ModelRef(sha256=A, name="tiny")
    assert model_ref(B) == wire.ModelRef(sha256=B, name=B[:12])
    with pytest.raises(ModelMismatch):
        model_ref(f"gemma-3-270m@{A}")
    with pytest.raises(ModelError, match="128"):
        model_ref(f"{'x' * 200}@{A}")


@pytest.mark.model
def test_a_gguf_file_is_labelled_by_its_general_name_unless_the_operator_names_it(tmp_path, gemma_path, monkeypatch):
    from tests.test_model_names_integration import altered_copy

    monkeypatch.setenv("INFERAD_CACHE", str(tmp_path / "cache"))
    assert gguf_label(gemma_path) == "gemma-3-270m"  # "Gemma 3 270m"
    copy = altered_copy(gemma_path, tmp_path / "files" / "copy.gguf", b"X")  # "Xemma 3 270m": other bytes
    assert resolve(str(copy)).name == "xemma-3-270m"
    assert resolve(f"my-finetune={copy}").name == "my-finetune"
    lowered = altered_copy(gemma_path, tmp_path / "other" / "copy.gguf", b"g")  # "gemma 3 270m", not gemma's bytes
    local = resolve(str(lowered))
    assert local.name == f"gemma-3-270m-{local.sha256[:8]}" and "--model-label" in naming_note(local)
