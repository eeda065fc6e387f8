import ml_collections
import numpy as np
import pytest

from mmjax.data import pipeline, shapes
from mmjax.data.tokenizer import WordTokenizer

SIZES = dict(num_train=64, num_validation=16, num_test=16)
N_IMG = 4  # image tokens per example


@pytest.fixture(scope="module")
def full(data_dir, tok):
    return pipeline.load_split(_cfg(data_dir), "train", tokenizer=tok)


def _cfg(data_dir, **overrides):
    cfg = dict(
        name="shapes",
        data_dir=data_dir,
        seed=0,
        image_size=64,
        max_len=48,
        flip_prob=0.5,
        worker_count=0,
        caption_prompt="what is in the image",
        caption_prob=0.3,
        caption_sampling="canonical",
        **SIZES,
    )
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def _batches(cfg, tok, n, *, seed=0, batch=16):
    it = iter(
        pipeline.train_loader(
            cfg,
            global_batch_size=batch,
            seed=seed,
            shard_index=0,
            shard_count=1,
            preprocess=pipeline.vlm_preprocess(cfg, tok, N_IMG),
        )
    )
    return [next(it) for _ in range(n)]


def _split(tok, row):
    """(prompt, answer) texts of one encoded row."""
    sep = int(np.flatnonzero(row == tok.sep_id)[0])
    return tok.decode(row[:sep]), tok.decode(row[sep + 1 :])


def _rows(batches):
    for b in batches:
        yield from zip(b["id"], b["image"], b["tokens"], b["kind"])


# ------------------------------------------------------------------------------------------ encode_vlm
def test_encode_vlm_layout(tok):
    ids, truncated = pipeline.encode_vlm(tok, 3, "What colour is the star?", "red", max_len=14)
    s = tok.stoi
    want = [
        tok.bos_id,
        *[tok.image_id] * 3,
        s["what"],
        s["colour"],
        s["is"],
        s["the"],
        s["star"],
        tok.sep_id,
        s["red"],
        tok.eot_id,
        tok.pad_id,
        tok.pad_id,
    ]
    assert ids.dtype == np.int32 and ids.tolist() == want and not truncated
    assert _split(tok, ids) == ("what colour is the star", "red")


def test_encode_vlm_truncates_the_answer_but_keeps_eot(tok):
    answer = "a large red circle in the center on a grey background"
    ids, truncated = pipeline.encode_vlm(tok, 2, "what is in the image", answer, max_len=14)
    assert truncated and ids.shape == (14,) and ids[-1] == tok.eot_id and (ids == tok.eot_id).sum() == 1
    assert _split(tok, ids) == ("what is in the image", "a large red circle")
    # The prompt with an empty answer fills max_len exactly: no answer token, but still no error.
    ids, truncated = pipeline.encode_vlm(tok, 2, "what is in the image", answer, max_len=10)
    assert truncated and ids[-2:].tolist() == [tok.sep_id, tok.eot_id]


def test_encode_vlm_prompt_too_long(tok):
    with pytest.raises(
        ValueError,
        match=r"max_len=9: 2 image tokens \+ 5 prompt tokens \+ 3 specials = 10; "
        r"raise data.max_len",
    ):
        pipeline.encode_vlm(tok, 2, "what is in the image", "red", max_len=9)
    with pytest.raises(ValueError, match=r"max_len=8: .* = 9; raise data.max_len"):
        pipeline.encode_vlm(tok, 2, "what is in the image", None, max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):  # the loader fails early, not in a worker
        pipeline.VlmPreprocess(tok, 2, 8, 0.5, "what is in the image", 0.3, "canonical")


def test_generation_prompt(tok):
    ids, truncated = pipeline.encode_vlm(tok, 3, "how many objects are there?", None, max_len=32)
    assert ids.dtype == np.int32 and not truncated
    assert ids.tolist() == [
        tok.bos_id,
        *[tok.image_id] * 3,
        *tok.encode("how many objects are there"),
        tok.sep_id,
    ]
    answered, _ = pipeline.encode_vlm(tok, 3, "how many objects are there?", "two", max_len=32)
    np.testing.assert_array_equal(answered[: len(ids)], ids)  # the training row starts with the prompt


# ---------------------------------------------------------------------------------------------- loader
def test_vlm_batch_layout(data_dir, tok):
    (batch,) = _batches(_cfg(data_dir), tok, 1)
    assert set(batch) == {"image", "tokens", "kind", "id", "truncated"}
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, 64, 64, 3)
    assert batch["tokens"].dtype == np.int32 and batch["tokens"].shape == (16, 48)
    assert (
        batch["kind"].dtype == np.int32 and batch["id"].dtype == np.int32 and batch["truncated"].dtype == bool
    )
    tokens = batch["tokens"]
    assert (tokens[:, 0] == tok.bos_id).all() and (tokens[:, 1 : N_IMG + 1] == tok.image_id).all()
    assert ((tokens == tok.image_id).sum(1) == N_IMG).all() and ((tokens == tok.sep_id).sum(1) == 1).all()
    assert ((tokens == tok.eot_id).sum(1) == 1).all() and not batch["truncated"].any()
    assert set(batch["kind"].tolist()) <= {0, 1}


def test_caption_examples_answer_with_a_caption_of_the_record(data_dir, tok, full):
    for sampling in ("canonical", "random"):
        batches = _batches(_cfg(data_dir, caption_prob=1.0, caption_sampling=sampling, flip_prob=0.0), tok, 4)
        picked = set()
        for i, image, tokens, kind in _rows(batches):
            prompt, answer = _split(tok, tokens)
            assert kind == 0 and prompt == "what is in the image"
            assert answer in full["captions"][i] and (sampling == "random" or answer == full["caption"][i])
            np.testing.assert_array_equal(image, full["image"][i])
            picked.add(answer != full["caption"][i])
        assert picked == ({False, True} if sampling == "random" else {False})


def test_vqa_examples_ask_a_question_of_the_record_consistently_flipped(data_dir, tok, full):
    seen = set()  # (image as stored, image mirrored)
    for i, image, tokens, kind in _rows(_batches(_cfg(data_dir, caption_prob=0.0), tok, 4)):
        assert kind == 1
        pairs = set(zip(map(WordTokenizer.normalize, full["questions"][i]), full["answers"][i]))
        plain, mirrored = (
            np.array_equal(image, full["image"][i]),
            np.array_equal(image, np.fliplr(full["image"][i])),
        )
        allowed = (pairs if plain else set()) | (
            {(shapes.flip_text(q), a) for q, a in pairs} if mirrored else set()
        )
        assert _split(tok, tokens) in allowed
        seen.add((plain, mirrored))
    assert {(True, False), (False, True)} <= seen  # flip_prob 0.5: some rows flipped, some not


def test_encode_vlm_more_turns_adds_whole_turns_only(tok):
    ids, truncated = pipeline.encode_vlm(
        tok,
        2,
        "what colour is the star",
        "red",
        24,
        [("how many objects are there", "two"), ("is there a red circle", "no")],
    )
    words = [tok.itos[i] for i in ids]
    assert (
        words[3:]
        == [
            "what",
            "colour",
            "is",
            "the",
            "star",
            "[SEP]",
            "red",
            "[EOT]",
            "how",
            "many",
            "objects",
            "are",
            "there",
            "[SEP]",
            "two",
            "[EOT]",
        ]
        + ["[PAD]"] * 5
    )
    assert not truncated  # the third turn (8 tokens) does not fit in the 5 left: left out, not cut


def test_vqa_turns_are_distinct_questions_of_the_record(data_dir, tok, full):
    cfg = _cfg(data_dir, caption_prob=0.0, vqa_turns=6, max_len=96, flip_prob=0.0)
    for i, _, tokens, _ in _rows(_batches(cfg, tok, 2)):
        seps, eots = np.flatnonzero(tokens == tok.sep_id), np.flatnonzero(tokens == tok.eot_id)
        assert len(seps) == len(eots) == len(full["questions"][i])  # every question fits in 96 tokens
        starts = [1 + N_IMG] + list(eots[:-1] + 1)
        turns = [
            (tok.decode(tokens[a:s]), tok.decode(tokens[s + 1 : e])) for a, s, e in zip(starts, seps, eots)
        ]
        pairs = list(zip(map(WordTokenizer.normalize, full["questions"][i]), full["answers"][i]))
        assert sorted(turns) == sorted(pairs)


def _questions(tok, tokens):
    """The questions of one row's turns."""
    seps, eots = np.flatnonzero(tokens == tok.sep_id), np.flatnonzero(tokens == tok.eot_id)
    starts = [1 + N_IMG] + list(eots[:-1] + 1)
    return [tok.decode(tokens[a:s]) for a, s in zip(starts, seps)]


def test_vqa_questions_all_adds_every_objects_questions(data_dir, tok, full):
    cfg = _cfg(data_dir, caption_prob=0.0, vqa_turns=20, max_len=200, flip_prob=0.0, vqa_questions="all")
    grew = 0
    for i, _, tokens, _ in _rows(_batches(cfg, tok, 2)):
        seps, eots = np.flatnonzero(tokens == tok.sep_id), np.flatnonzero(tokens == tok.eot_id)
        starts = [1 + N_IMG] + list(eots[:-1] + 1)
        turns = [
            (tok.decode(tokens[a:s]), tok.decode(tokens[s + 1 : e])) for a, s, e in zip(starts, seps, eots)
        ]
        stored = set(zip(map(WordTokenizer.normalize, full["questions"][i]), full["answers"][i]))
        assert stored <= set(turns) and len(set(turns)) == len(turns)  # its own, and no repeats
        n = len(shapes.example_scene(0, "train", int(i))[0].objects)
        more = {q for q, _ in turns} - {q for q, _ in stored}
        assert sum(" the " in q and q.startswith("is the ") for q in more) <= n * (n - 1) // 2
        grew += len(more)
    assert grew > 0
    with pytest.raises(
        ValueError, match="data.vqa_questions must be 'stored', 'all' or 'balanced', got 'every'"
    ):
        pipeline.vlm_preprocess(_cfg(data_dir, vqa_questions="every"), tok, N_IMG)


def test_vqa_side_questions_add_each_objects_side(data_dir, tok):
    kw = dict(caption_prob=0.0, vqa_turns=20, max_len=200, flip_prob=0.0, vqa_questions="all")
    plain, sides = _cfg(data_dir, **kw), _cfg(data_dir, vqa_side_questions=True, **kw)
    added = 0
    for (i, _, a, _), (j, _, b, _) in zip(_rows(_batches(plain, tok, 2)), _rows(_batches(sides, tok, 2))):
        assert i == j
        objs = shapes.example_scene(0, "train", int(i))[0].objects
        more = set(_questions(tok, b)) - set(_questions(tok, a))
        assert {q.split(" on ")[0].split(" at ")[0] for q in more} <= {f"is the {o.name}" for o in objs}
        added += len(more)
    assert added > 0
    with pytest.raises(ValueError, match="data.vqa_side_questions=True adds to .* use 'all' or 'balanced'"):
        pipeline.vlm_preprocess(_cfg(data_dir, vqa_side_questions=True), tok, N_IMG)


def test_vqa_questions_balanced_leaves_out_shortcut_questions(data_dir, tok):
    """ "balanced" asks what "all" asks, less the questions ``shapes.pair_shortcut`` flags."""
    kw = dict(caption_prob=0.0, vqa_turns=20, max_len=200, flip_prob=0.0)
    every = _cfg(data_dir, vqa_questions="all", **kw)
    balanced = _cfg(data_dir, vqa_questions="balanced", **kw)
    dropped = 0
    for (i, _, a, _), (j, _, b, _) in zip(_rows(_batches(every, tok, 2)), _rows(_batches(balanced, tok, 2))):
        assert i == j
        scene = shapes.example_scene(0, "train", int(i))[0]
        objects = {k: np.array([getattr(o, k) for o in scene.objects]) for k in ("colour", "shape")}
        asked_all, asked = set(_questions(tok, a)), set(_questions(tok, b))
        assert not any(shapes.pair_shortcut(objects, q) for q in asked)
        assert asked <= asked_all and all(shapes.pair_shortcut(objects, q) for q in asked_all - asked)
        dropped += len(asked_all - asked)
    assert dropped > 0


def test_a_record_whose_every_question_is_a_shortcut_keeps_them(data_dir, tok):
    """Filtering may not leave a record with no question (an IndexError mid-training): it keeps its own."""
    cfg = _cfg(data_dir, caption_prob=0.0, vqa_turns=20, max_len=200, flip_prob=0.0)
    source = pipeline.data_source(cfg, "train")
    every = pipeline.VlmPreprocess(
        tok, N_IMG, 200, 0.0, "what is in the image", 0.0, "canonical", 20, shortcut=lambda r, q: True
    )
    record = source[0]
    row = every.random_map(record, np.random.default_rng(0))
    stored = {WordTokenizer.normalize(q) for q in pipeline.texts(record, "questions")}
    assert set(_questions(tok, row["tokens"])) == stored


def test_same_seed_same_batches(data_dir, tok):
    cfg = _cfg(data_dir, caption_prob=0.5, caption_sampling="random")
    a, b, other = (_batches(cfg, tok, 3, seed=s) for s in (7, 7, 8))
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(a[0]["tokens"], other[0]["tokens"])
    kinds = np.concatenate([x["kind"] for x in a])
    assert 0 < kinds.sum() < len(kinds)  # both kinds occur


def test_bad_arguments(data_dir, tok):
    with pytest.raises(ValueError, match="caption_sampling must be 'random' or 'canonical', got 'first'"):
        pipeline.vlm_preprocess(_cfg(data_dir, caption_sampling="first"), tok, N_IMG)
    with pytest.raises(ValueError, match="needs a tokenizer or a preprocess"):
        pipeline.train_loader(_cfg(data_dir), global_batch_size=16, seed=0, shard_index=0, shard_count=1)


# ------------------------------------------------------------------------------- two images per example
def test_about_image_names_one_of_two_images():
    assert shapes.about_image("what is in the image", 1) == "what is in the second image"
    assert shapes.about_image("what colour is the star?", 0) == "in the first image what colour is the star?"
    with pytest.raises(ValueError, match="image index 2 has no ordinal word"):
        shapes.about_image("what colour is the star?", 2)


def test_pair_partners_are_fixed_and_never_the_example_itself():
    p = pipeline.pair_partners(64)
    assert (
        p.shape == (64,) and not np.any(p == np.arange(64)) and np.array_equal(p, pipeline.pair_partners(64))
    )
    assert len(set(p.tolist())) > 32  # spread over the split, not one fixed offset
    with pytest.raises(ValueError, match="at least 2 examples"):
        pipeline.pair_partners(1)


def test_pair_rows_ask_about_the_image_they_name(data_dir, tok, full):
    """Each row's first turn names image k and carries a question and answer of record k of its pair;
    the later turns name either image, each with a question of that image; both images are mirrored
    together (with the text) or not at all."""
    cfg = _cfg(data_dir, caption_prob=0.2, vqa_turns=3, max_len=96, images_per_example=2)
    partners = pipeline.pair_partners(len(full["caption"]))
    seen_which, seen_flip = set(), set()
    for b in _batches(cfg, tok, 3):
        assert b["image"].shape == (16, 2, 64, 64, 3)
        for asked_id, image, tokens, kind in zip(b["id"], b["image"], b["tokens"], b["kind"]):
            assert (tokens == tok.image_id).sum() == N_IMG
            # which pair is it? the one whose images these are, plain or mirrored
            first = [
                i
                for i in range(len(partners))
                for f in (False, True)
                if np.array_equal(image[0], np.flip(full["image"][i], 1) if f else full["image"][i])
                and np.array_equal(
                    image[1], np.flip(full["image"][partners[i]], 1) if f else full["image"][partners[i]]
                )
            ]
            assert len(first) == 1
            pair = (first[0], int(partners[first[0]]))
            flipped = not np.array_equal(image[0], full["image"][pair[0]])
            assert asked_id in pair
            seps, eots = np.flatnonzero(tokens == tok.sep_id), np.flatnonzero(tokens == tok.eot_id)
            starts = [1 + N_IMG] + list(eots[:-1] + 1)
            for t, (a, s, e) in enumerate(zip(starts, seps, eots)):
                prompt, answer = tok.decode(tokens[a:s]), tok.decode(tokens[s + 1 : e])
                k = 0 if "first image" in prompt else 1
                assert (
                    f"{shapes.ORDINALS[k]} image" in prompt
                    and f"{shapes.ORDINALS[1 - k]} image" not in prompt
                )
                rec = pair[k]
                if t == 0:
                    assert rec == asked_id
                    seen_which.add(k)
                if kind == 0 and t == 0:
                    assert prompt == shapes.about_image("what is in the image", k)
                    assert answer == (
                        shapes.flip_text(full["caption"][rec]) if flipped else full["caption"][rec]
                    )
                else:
                    qa = {
                        (shapes.about_image(WordTokenizer.normalize(q), k), a)
                        for q, a in zip(full["questions"][rec], full["answers"][rec])
                    }
                    if flipped:
                        qa = {(shapes.flip_text(q), shapes.flip_text(a)) for q, a in qa}
                    assert (prompt, answer) in qa
            seen_flip.add(flipped)
    assert seen_which == {0, 1} and seen_flip == {False, True}


def test_load_pairs(data_dir, tok, full):
    cfg = _cfg(data_dir, images_per_example=2)
    data = pipeline.load_pairs(cfg, "train", tokenizer=tok, max_examples=10)
    single = pipeline.load_split(cfg, "train", tokenizer=tok, max_examples=10)
    p = pipeline.pair_partners(10)
    assert data["image"].shape == (10, 2, 64, 64, 3) and data["pairs"].tolist() == [
        [i, p[i]] for i in range(10)
    ]
    for i in range(10):
        np.testing.assert_array_equal(data["image"][i, 1], single["image"][p[i]])
        k = i % 2
        assert data["caption_prompt"][i] == shapes.about_image("what is in the image", k)
        assert data["captions"][i] == single["captions"][data["pairs"][i][k]]
        want = [shapes.about_image(q, j) for j in (0, 1) for q in single["questions"][data["pairs"][i][j]]]
        assert data["questions"][i] == want
        assert len(data["answers"][i]) == len(data["question_types"][i]) == len(want)
    with pytest.raises(ValueError, match="data.images_per_example must be 1 or 2, got 3"):
        pipeline.vlm_preprocess(_cfg(data_dir, images_per_example=3), tok, N_IMG)
