"""The parameter-name maps: which transformers state-dict key is which mmjax parameter, laid out how.

``clip_rules(cfg)``, ``siglip_rules(cfg)`` and ``llava_rules(cfg)`` list one :class:`Rule` per mmjax
parameter of the model ``cfg`` describes, built from the towers' rules below (ViT, text encoder, Llama).
Import and export use the same lists, so export -> import is the identity. docs/interop.md has the
table of names.
"""

from __future__ import annotations

from typing import Mapping

from mmjax.interop.hf_layouts import Rule


# ----------------------------------------------------------------------------- towers
def _encoder_rules(hf: str, mm: str, depth: int) -> list[Rule]:
    rules = []
    for i in range(depth):
        h, m = f"{hf}.layers.{i}", f"{mm}/block_{i}"
        rules += [*_ln(f"{h}.layer_norm1", f"{m}/ln_attn"), *_ln(f"{h}.layer_norm2", f"{m}/ln_mlp")]
        rules += _attention_rules(
            f"{h}.self_attn",
            f"{m}/attn",
            [(f"{h}.self_attn.{n}_proj.weight", f"{h}.self_attn.{n}_proj.bias") for n in "qkv"],
        )
        rules += _mlp_rules(f"{h}.mlp", f"{m}/mlp")
    return rules


def _attention_rules(hf: str, mm: str, qkv: list[tuple[str, str]]) -> list[Rule]:
    """q/k/v from ``qkv`` = [(weight key, bias key)] * 3, and ``{hf}.out_proj``."""
    rules = []
    for (weight, bias), name in zip(qkv, ("query", "key", "value")):
        rules += [Rule(weight, f"{mm}/{name}/kernel", "dense1"), Rule(bias, f"{mm}/{name}/bias", "flat")]
    return rules + [
        Rule(f"{hf}.out_proj.weight", f"{mm}/out/kernel", "dense2"),
        Rule(f"{hf}.out_proj.bias", f"{mm}/out/bias"),
    ]


def _mlp_rules(hf: str, mm: str) -> list[Rule]:
    return [Rule(f"{hf}.{n}.weight", f"{mm}/{n}/kernel", "dense1") for n in ("fc1", "fc2")] + [
        Rule(f"{hf}.{n}.bias", f"{mm}/{n}/bias") for n in ("fc1", "fc2")
    ]


def _ln(hf: str, mm: str) -> list[Rule]:
    return [Rule(f"{hf}.weight", f"{mm}/scale"), Rule(f"{hf}.bias", f"{mm}/bias")]


def _vit_rules(hf: str, mm: str, image: Mapping) -> list[Rule]:
    e = f"{hf}.embeddings"
    rules = [
        Rule(f"{e}.patch_embedding.weight", f"{mm}/patch_kernel", "conv"),
        Rule(f"{e}.position_embedding.weight", f"{mm}/pos_embedding", "drop0"),
    ]
    if image.get("patch_bias", True):
        rules.append(Rule(f"{e}.patch_embedding.bias", f"{mm}/patch_bias"))
    if image.get("pool", "cls") == "cls":
        rules.append(Rule(f"{e}.class_embedding", f"{mm}/cls", "flat"))
    if image.get("pre_norm", False):
        rules += _ln(f"{hf}.pre_layrnorm", f"{mm}/ln_pre")
    rules += _encoder_rules(f"{hf}.encoder", f"{mm}/encoder", image["depth"])
    rules += _ln(f"{hf}.post_layernorm", f"{mm}/ln_post")
    if image.get("pool") == "map":
        a, m = f"{hf}.head.attention", f"{mm}/map_head"
        rules += [Rule(f"{hf}.head.probe", f"{m}/probe")]
        rules += _attention_rules(a, m, [(f"{a}.in_proj_weight:{n}", f"{a}.in_proj_bias:{n}") for n in "qkv"])
        rules += _ln(f"{hf}.head.layernorm", f"{m}/ln") + _mlp_rules(f"{hf}.head.mlp", f"{m}/mlp")
    return rules


def _text_rules(hf: str, mm: str, text: Mapping) -> list[Rule]:
    return [
        Rule(f"{hf}.embeddings.token_embedding.weight", f"{mm}/token_embed/embedding"),
        Rule(f"{hf}.embeddings.position_embedding.weight", f"{mm}/pos_embedding"),
        *_encoder_rules(f"{hf}.encoder", f"{mm}/encoder", text["depth"]),
        *_ln(f"{hf}.final_layer_norm", f"{mm}/ln_final"),
    ]


def _llama_rules(hf: str, head: str, mm: str, lm: Mapping) -> list[Rule]:
    rules = [
        Rule(f"{hf}.embed_tokens.weight", f"{mm}/token_embed/embedding"),
        Rule(f"{hf}.norm.weight", f"{mm}/ln_final/scale"),
    ]
    for i in range(lm["depth"]):
        h, m = f"{hf}.layers.{i}", f"{mm}/block_{i}"
        rules += [
            Rule(f"{h}.input_layernorm.weight", f"{m}/ln_attn/scale"),
            Rule(f"{h}.post_attention_layernorm.weight", f"{m}/ln_mlp/scale"),
            *(Rule(f"{h}.self_attn.{n}_proj.weight", f"{m}/attn/{n}/kernel", "dense1") for n in "qkv"),
            Rule(f"{h}.self_attn.o_proj.weight", f"{m}/attn/o/kernel", "dense2"),
            *(
                Rule(f"{h}.mlp.{n}_proj.weight", f"{m}/mlp/{n}/kernel", "dense1")
                for n in ("gate", "up", "down")
            ),
        ]
    if not lm.get("tie_embeddings", False):
        rules.append(Rule(f"{head}.weight", f"{mm}/lm_head/kernel", "dense1"))
    return rules


# ----------------------------------------------------------------------------- architectures
def clip_rules(cfg: Mapping) -> list[Rule]:
    return [
        *_vit_rules("vision_model", "image", cfg["image"]),
        *_text_rules("text_model", "text", cfg["text"]),
        Rule("visual_projection.weight", "image_proj/kernel", "dense1"),
        Rule("text_projection.weight", "text_proj/kernel", "dense1"),
        Rule("logit_scale", "logit_scale"),
    ]


def siglip_rules(cfg: Mapping) -> list[Rule]:
    return [
        *_vit_rules("vision_model", "image", cfg["image"]),
        *_text_rules("text_model", "text", cfg["text"]),
        Rule("text_model.head.weight", "text_proj/kernel", "dense1"),
        Rule("text_model.head.bias", "text_proj/bias"),
        Rule("logit_scale", "logit_scale", "flat"),
        Rule("logit_bias", "logit_bias", "flat"),
    ]


def llava_rules(cfg: Mapping) -> list[Rule]:
    p = "model.multi_modal_projector"
    return [
        *_vit_rules("model.vision_tower", "image", cfg["image"]),
        Rule(f"{p}.linear_1.weight", "proj_0/kernel", "dense1"),
        Rule(f"{p}.linear_1.bias", "proj_0/bias"),
        Rule(f"{p}.linear_2.weight", "proj_1/kernel", "dense1"),
        Rule(f"{p}.linear_2.bias", "proj_1/bias"),
        *_llama_rules("model.language_model", "lm_head", "lm", cfg["lm"]),
    ]
