"""mmjax == Hugging Face transformers on tiny random models (offline): CLIP, SigLIP (and LLaVA below).

Every torch parameter is perturbed away from its initial value first (layer norms start at 1/0, so an
import that swapped a scale and a bias would otherwise pass). Tolerance: 1e-5 absolute, float32.
"""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import require  # importorskip, but an error under CI=true

torch = require("torch")
transformers = require("transformers")
require("safetensors")

from helpers import perturbed, tiny_llava_config  # noqa: E402

from mmjax import models  # noqa: E402
from mmjax.config import ConfigError  # noqa: E402
from mmjax.interop import hf  # noqa: E402

ATOL = 1e-5
transformers.logging.set_verbosity_error()

# Awkward sizes: width 36 with 3 heads (head size 12), MLP 37, odd head sizes (5), images of 30 and 33
# pixels (5x5 and 3x3 patch grids), 28 pixels with patch 7; both CLIP text poolings (first EOS, and the
# legacy argmax of configs with eos_token_id == 2); three activations.
CASES = {
    "clip": (
        "CLIPModel",
        dict(
            text_config=dict(
                vocab_size=99,
                hidden_size=36,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=3,
                max_position_embeddings=11,
                bos_token_id=97,
                eos_token_id=98,
                pad_token_id=0,
            ),
            vision_config=dict(
                hidden_size=36,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=3,
                image_size=30,
                patch_size=6,
            ),
            projection_dim=20,
        ),
    ),
    "clip_argmax": (
        "CLIPModel",
        dict(
            text_config=dict(
                vocab_size=99,
                hidden_size=20,
                intermediate_size=24,
                num_hidden_layers=1,
                num_attention_heads=4,
                max_position_embeddings=11,
                bos_token_id=97,
                eos_token_id=2,
                pad_token_id=0,
                hidden_act="gelu",
            ),
            vision_config=dict(
                hidden_size=20,
                intermediate_size=24,
                num_hidden_layers=1,
                num_attention_heads=5,
                image_size=33,
                patch_size=11,
                hidden_act="gelu",
                layer_norm_eps=1e-6,
            ),
            projection_dim=12,
        ),
    ),
    "siglip": (
        "SiglipModel",
        dict(
            text_config=dict(
                vocab_size=99,
                hidden_size=36,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=3,
                max_position_embeddings=11,
                eos_token_id=98,
                pad_token_id=0,
            ),
            vision_config=dict(
                hidden_size=36,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=3,
                image_size=28,
                patch_size=7,
            ),
        ),
    ),
}
# [BOS] words [EOS] [PAD]...; the second row is long, the third is only BOS EOS.
TOKENS = np.array(
    [
        [97, 5, 6, 7, 98, 0, 0, 0, 0, 0, 0],
        [97, 50, 60, 70, 80, 90, 10, 11, 12, 98, 0],
        [97, 98, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.int64,
)


def _hf_model(name):
    arch, kwargs = CASES[name]
    config = getattr(transformers, arch.replace("Model", "Config"))(**kwargs)
    torch.manual_seed(0)
    return perturbed(getattr(transformers, arch)(config), seed=1)


def _images(size, n=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def _torch_outputs(model, images, tokens):
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens), pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2)
        )
    return {
        "image": out.image_embeds.numpy(),
        "text": out.text_embeds.numpy(),
        "logits": out.logits_per_text.numpy(),
    }


def _mmjax_outputs(cfg, params, images, tokens):
    out, _ = models.build(cfg).apply({"params": params}, jnp.asarray(images), jnp.asarray(tokens, jnp.int32))
    logits = out["text"] @ out["image"].T * out["logit_scale"] + out.get("logit_bias", 0.0)
    return {"image": np.asarray(out["image"]), "text": np.asarray(out["text"]), "logits": np.asarray(logits)}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    """(name, torch model, its outputs, imported cfg + params, a directory saved from them)."""
    model = _hf_model(request.param)
    images = _images(model.config.vision_config.image_size)
    cfg, params = hf.load(model)
    directory = hf.save(cfg, params, str(tmp_path_factory.mktemp(request.param)))
    return dict(
        name=request.param,
        model=model,
        images=images,
        torch=_torch_outputs(model, images, TOKENS),
        cfg=cfg,
        params=params,
        dir=directory,
    )


def test_imported_config_is_a_repo_model_config(case):
    cfg = case["cfg"]
    assert cfg.type == "two_tower" and cfg.hf.architecture == CASES[case["name"]][0]
    assert cfg.image_size == case["model"].config.vision_config.image_size
    expected = {
        "clip": ("eot", 98, "cls", True),
        "clip_argmax": ("argmax", 2, "cls", True),
        "siglip": ("last", 98, "map", False),
    }[case["name"]]
    assert (cfg.text.pool, cfg.text.eot_id, cfg.image.pool, cfg.text.causal) == expected
    assert cfg.image.norm_eps == case["model"].config.vision_config.layer_norm_eps
    # the params tree is exactly the tree mmjax would initialise for this config
    shapes = hf.param_shapes(cfg)
    flat = hf._flatten(case["params"])
    assert {k: v.shape for k, v in flat.items()} == shapes
    assert all(v.dtype == np.float32 for v in flat.values())


def test_embeddings_and_logits_match_torch(case):
    got = _mmjax_outputs(case["cfg"], case["params"], case["images"], TOKENS)
    for key in ("image", "text", "logits"):
        assert got[key].shape == case["torch"][key].shape
        np.testing.assert_allclose(got[key], case["torch"][key], rtol=0, atol=ATOL, err_msg=key)
    # a wrong pooling position or mask would move the text embeddings far more than the tolerance
    assert np.abs(got["text"][0] - got["text"][1]).max() > 1e-2


@pytest.mark.parametrize("case", ["siglip"], indirect=True)  # one case is enough (and saves compiles)
def test_parity_holds_under_highest_matmul_precision_too(case):
    with jax.default_matmul_precision("highest"):
        got = _mmjax_outputs(case["cfg"], case["params"], case["images"], TOKENS)
    np.testing.assert_allclose(got["logits"], case["torch"]["logits"], rtol=0, atol=ATOL)


def test_export_then_import_is_the_identity(case):
    cfg, params = hf.load(case["dir"])
    assert cfg.to_dict() == case["cfg"].to_dict()
    before, after = hf._flatten(case["params"]), hf._flatten(params)
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    # and the transformers state dict survives mmjax unchanged, key for key
    _, state = hf.to_hf(cfg, params)
    original = {k: v.numpy() for k, v in case["model"].state_dict().items()}
    assert sorted(state) == sorted(original)
    for key in state:
        np.testing.assert_array_equal(state[key], original[key], err_msg=key)


def test_exported_directory_loads_in_transformers_and_matches(case):
    arch = CASES[case["name"]][0]
    with open(os.path.join(case["dir"], "config.json")) as f:
        assert json.load(f)["architectures"] == [arch]
    loaded = getattr(transformers, arch).from_pretrained(case["dir"]).eval()
    assert type(loaded).__name__ == arch
    out = _torch_outputs(loaded, case["images"], TOKENS)
    for key in ("image", "text", "logits"):
        np.testing.assert_allclose(out[key], case["torch"][key], rtol=0, atol=ATOL, err_msg=key)


# ------------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def clip_state():
    model = _hf_model("clip")
    config = model.config.to_dict()
    config["architectures"] = ["CLIPModel"]
    return config, {k: v.numpy() for k, v in model.state_dict().items()}


def _one_line_error(config, state, match):
    with pytest.raises(hf.InteropError, match=match) as info:
        hf.from_hf(config, state)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)
    return str(info.value)


def test_unsupported_architecture_is_named(clip_state):
    config, state = clip_state
    _one_line_error(
        {"architectures": ["BertModel"], "model_type": "bert"},
        state,
        r"^unsupported architecture 'BertModel'; supported: CLIPModel, SiglipModel, "
        r"LlavaForConditionalGeneration$",
    )
    vision_only = transformers.CLIPVisionModel(
        transformers.CLIPVisionConfig(**CASES["clip"][1]["vision_config"])
    )
    with pytest.raises(hf.InteropError, match=r"^unsupported architecture 'CLIPVisionModel'"):
        hf.load(vision_only)


def test_missing_weight_is_named(clip_state):
    config, state = clip_state
    state = {k: v for k, v in state.items() if k != "text_model.encoder.layers.1.mlp.fc2.bias"}
    _one_line_error(
        config, state, r"^CLIPModel: weight 'text_model\.encoder\.layers\.1\.mlp\.fc2\.bias' is missing$"
    )


def test_unexpected_weight_is_named(clip_state):
    config, state = clip_state
    state = dict(state, **{"text_model.extra.weight": np.zeros(3, np.float32)})
    _one_line_error(
        config,
        state,
        r"^CLIPModel: unexpected weight 'text_model\.extra\.weight'; the config does not "
        r"describe it$",
    )


def test_shape_mismatch_names_the_key_and_both_shapes(clip_state):
    config, state = clip_state
    state = dict(state, **{"text_projection.weight": np.zeros((21, 36), np.float32)})
    _one_line_error(
        config,
        state,
        r"^CLIPModel: weight 'text_projection\.weight' has shape \(21, 36\), expected "
        r"\(20, 36\) \(mmjax 'text_proj/kernel' \(36, 20\)\)$",
    )
    # a config that disagrees with the weights: one more layer than stored
    deeper = json.loads(json.dumps(config))
    deeper["vision_config"]["num_hidden_layers"] = 3
    _one_line_error(
        deeper,
        clip_state[1],
        r"^CLIPModel: weight 'vision_model\.encoder\.layers\.2\.layer_norm1\.weight' "
        r"is missing \(and 15 more\)$",
    )


def test_fused_attention_weight_of_wrong_shape(tmp_path):
    model = _hf_model("siglip")
    config = dict(model.config.to_dict(), architectures=["SiglipModel"])
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    state["vision_model.head.attention.in_proj_weight"] = np.zeros((100, 36), np.float32)
    _one_line_error(
        config,
        state,
        r"^weight 'vision_model\.head\.attention\.in_proj_weight' has shape \(100, 36\): its "
        r"first axis should hold query, key and value, a multiple of 3$",
    )
    state["vision_model.head.attention.in_proj_weight"] = np.zeros((105, 36), np.float32)
    _one_line_error(
        config,
        state,
        r"^SiglipModel: weight 'vision_model\.head\.attention\.in_proj_weight part q' has "
        r"shape \(35, 36\), expected \(36, 36\)",
    )


def test_unsupported_options_are_errors(clip_state):
    config, state = clip_state
    square = json.loads(json.dumps(config))
    square["vision_config"]["image_size"] = [30, 36]
    _one_line_error(square, state, r"^vision image_size \[30, 36\] is not square")
    act = json.loads(json.dumps(config))
    act["text_config"]["hidden_act"] = "swish"
    _one_line_error(act, state, r"^text: activation 'swish' is not supported")


def test_bad_directories(tmp_path):
    with pytest.raises(hf.InteropError, match="has no config.json"):
        hf.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"]}))
    with pytest.raises(hf.InteropError, match="has no model.safetensors"):
        hf.load(str(tmp_path))


def test_export_refuses_what_the_architecture_cannot_express(case, tmp_path):
    shapes_cfg = models.model_config("clip-shapes")  # a hybrid ViT with average pooling: not a CLIPModel
    with pytest.raises(
        hf.InteropError,
        match=r"^cannot export to CLIPModel: model\.image\.pool='gap', CLIPModel "
        r"needs one of \['cls'\]$",
    ):
        hf.save(shapes_cfg, {}, str(tmp_path))  # the config is checked before the params
    assert not os.listdir(tmp_path)
    for key, value in (("object_head", True), ("scene_pool", "tokens")):  # no transformers counterpart
        with pytest.raises(
            hf.InteropError, match=rf"^cannot export to {CASES[case['name']][0]}: model\.{key}="
        ):
            hf.to_hf(dict(hf._to_plain(case["cfg"]), **{key: value}), case["params"])
    flat = hf._flatten(case["params"])
    key = "text/ln_final/scale"
    flat[key] = np.zeros(7, np.float32)
    with pytest.raises(
        hf.InteropError,
        match=rf"^cannot export to {CASES[case['name']][0]}: parameter '{key}' has "
        r"shape \(7,\), expected \(\d+,\) from the config$",
    ):
        hf.to_hf(case["cfg"], hf._unflatten(flat))
    del flat[key]
    with pytest.raises(hf.InteropError, match=rf"parameter '{key}' is missing for this config$"):
        hf.to_hf(case["cfg"], hf._unflatten(flat))


# -------------------------------------------------------------------------------------------- LLaVA
IMAGE_ID = 63


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """A tiny random LLaVA: CLIP vision tower (3 layers, features of layer -2, CLS dropped), 2-layer Llama
    with grouped-query attention (4 heads, 2 key/value heads)."""
    config = tiny_llava_config(vision_layers=3, patch_size=6, max_positions=128, image_token_id=IMAGE_ID)
    torch.manual_seed(0)
    model = perturbed(transformers.LlavaForConditionalGeneration(config), seed=2)
    cfg, params = hf.load(model)
    directory = hf.save(cfg, params, str(tmp_path_factory.mktemp("llava")))
    n = models.build(cfg).num_image_tokens(cfg.image_size)
    # two prompts of different lengths, left-padded with pad id 0: [BOS] [IMG] x n words...
    prompts = [[1] + [IMAGE_ID] * n + [5, 6, 7, 8, 9], [1] + [IMAGE_ID] * n + [40, 41]]
    ids = np.zeros((2, max(map(len, prompts))), np.int64)
    for row, p in enumerate(prompts):
        ids[row, ids.shape[1] - len(p) :] = p
    return dict(
        model=model, cfg=cfg, params=params, dir=directory, ids=ids, images=_images(30, n=2, seed=3), n=n
    )


def _pixels(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def test_llava_config(llava):
    cfg = llava["cfg"]
    assert (cfg.type, cfg.image.feature_layer, cfg.vision_tokens, cfg.attn_mask) == (
        "early_fusion",
        -2,
        "patches",
        "causal",
    )
    assert (cfg.image_id, cfg.pad_id, cfg.lm.num_kv_heads) == (IMAGE_ID, 0, 2)
    assert llava["n"] == 25  # a 5x5 patch grid, CLS dropped


def test_llava_logits_match_torch(llava):
    ids, images = llava["ids"], llava["images"]
    mask = torch.from_numpy(ids != 0).long()
    with torch.no_grad():
        expected = llava["model"](
            input_ids=torch.from_numpy(ids), pixel_values=_pixels(images), attention_mask=mask
        ).logits.numpy()
    logits, _ = models.build(llava["cfg"]).apply(
        {"params": llava["params"]}, jnp.asarray(images), jnp.asarray(ids, jnp.int32)
    )
    real = ids != 0  # padding positions are not compared (their outputs are meaningless in both)
    assert logits.shape == expected.shape
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], rtol=0, atol=ATOL)


def test_llava_greedy_generation_matches_transformers(llava):
    from mmjax import generate

    ids, images, new = llava["ids"], llava["images"], 6
    with torch.no_grad():
        expected = (
            llava["model"]
            .generate(
                input_ids=torch.from_numpy(ids),
                pixel_values=_pixels(images),
                attention_mask=torch.from_numpy(ids != 0).long(),
                max_new_tokens=new,
                do_sample=False,
            )[:, ids.shape[1] :]
            .numpy()
        )
    fn = generate.make_generate(models.build(llava["cfg"]), max_new_tokens=new, eos_id=2, pad_id=0)
    got = np.asarray(fn(llava["params"], jnp.asarray(images), jnp.asarray(ids, jnp.int32), jax.random.key(0)))
    np.testing.assert_array_equal(got, expected)
    assert len(set(got[:, 0].tolist())) == 2  # the two prompts lead to different first tokens


def test_llava_export_import_identity_and_transformers_loads_it(llava):
    cfg, params = hf.load(llava["dir"])
    assert cfg.to_dict() == llava["cfg"].to_dict()
    before, after = hf._flatten(llava["params"]), hf._flatten(params)
    assert sorted(before) == sorted(after) and all(np.array_equal(after[k], before[k]) for k in before)
    loaded = transformers.LlavaForConditionalGeneration.from_pretrained(llava["dir"]).eval()
    original = llava["model"].state_dict()
    assert sorted(loaded.state_dict()) == sorted(original)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_llava_with_scanned_layers_matches_and_exports_the_same(llava):
    """scan=True on the vision tower and on the LM (stacked parameters from models.stack_layers): the same
    logits and greedy generation (through the stacked KV cache), and the same Hugging Face export."""
    from mmjax import generate

    cfg = llava["cfg"].to_dict()
    cfg["image"]["scan"] = cfg["lm"]["scan"] = True
    params = models.stack_layers(llava["params"])
    assert params["lm"]["blocks"]["attn"]["q"]["kernel"].shape == (2, 32, 4, 8)
    back = hf._flatten(models.unstack_layers(params))
    assert sorted(back) == sorted(hf._flatten(llava["params"]))
    ids, images = jnp.asarray(llava["ids"], jnp.int32), jnp.asarray(llava["images"])
    logits, _ = models.build(cfg).apply({"params": params}, images, ids)
    expected, _ = models.build(llava["cfg"]).apply({"params": llava["params"]}, images, ids)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
    tokens = [
        np.asarray(
            generate.make_generate(models.build(c), max_new_tokens=6, eos_id=2, pad_id=0)(
                p, images, ids, jax.random.key(0)
            )
        )
        for c, p in ((cfg, params), (llava["cfg"], llava["params"]))
    ]
    np.testing.assert_array_equal(*tokens)
    (hf_cfg, state), (hf_cfg0, state0) = hf.to_hf(cfg, params), hf.to_hf(llava["cfg"], llava["params"])
    assert hf_cfg == hf_cfg0 and sorted(state) == sorted(state0)
    assert all(np.array_equal(state[k], state0[k]) for k in state)


def test_llava_unsupported_options(llava):
    config = dict(llava["model"].config.to_dict(), architectures=["LlavaForConditionalGeneration"])
    state = {k: v.numpy() for k, v in llava["model"].state_dict().items()}
    _one_line_error(
        dict(config, vision_feature_layer=[-2, -1]),
        state,
        r"^LLaVA: vision_feature_layer \[-2, -1\] \(several layers\) is not supported; use one layer$",
    )
    text = dict(
        config["text_config"], rope_parameters={"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    )
    _one_line_error(
        dict(config, text_config=text), state, r"^LLaVA: rope scaling .* is not supported; only default rope$"
    )


def test_bfloat16_directory_loads_as_float32(tmp_path):
    model = _hf_model("clip").to(torch.bfloat16)
    model.save_pretrained(str(tmp_path))
    cfg, params = hf.load(str(tmp_path))
    _, state = hf.to_hf(cfg, params)
    for key, value in model.state_dict().items():
        assert state[key].dtype == np.float32
        np.testing.assert_array_equal(state[key], value.float().numpy(), err_msg=key)


def test_export_refuses_configs_transformers_would_run_differently(llava):
    clip = hf.load(_hf_model("clip"))[0]
    clip.text.eot_id = 2  # transformers would pool at the largest id instead of the first EOS
    with pytest.raises(
        hf.InteropError, match=r"^cannot export to CLIPModel: model\.text\.pool='eot' with eot_id=2;"
    ):
        hf.to_hf(clip, {})
    cfg = llava["cfg"].copy_and_resolve_references()
    cfg.image.feature_layer = None  # features after the final norm: no LLaVA setting gives those
    with pytest.raises(
        hf.InteropError,
        match=r"^cannot export to LlavaForConditionalGeneration: "
        r"model\.image\.feature_layer=None;",
    ):
        hf.to_hf(cfg, llava["params"])


def test_vit_feature_layer_out_of_range_is_an_error():
    vit = models.build(dict(CASES_MM_VIT, type="two_tower"))
    with pytest.raises(
        ValueError, match=r"^ViT: feature_layer 4 is out of range for depth 2; use -3 \.\. 2$"
    ):
        vit.image.check((30, 30))


CASES_MM_VIT = dict(
    image_size=30,
    embed_dim=12,
    image=dict(width=12, depth=2, num_heads=3, mlp_dim=8, patch_size=6, feature_layer=4),
    text=dict(vocab_size=10, max_len=4, width=12, depth=1, num_heads=3, mlp_dim=8),
)
