"""Tasks: what ``train.py``'s single train step needs to know about a kind of training.

A task bundles a model, how a batch is fed to it, the loss and its metrics, the data, and the final
evaluation. ``train.py`` builds one jitted ``train_step(state, batch)`` from any task, so CLIP,
SigLIP and the fusion models share one loop instead of forked trainers.

Interface (duck-typed):
  model                                   linen module
  batch_spec(batch_size) -> dict          ShapeDtypeStructs of one global batch (for init/compile)
  init(rng) -> params                     logically boxed parameters
  loss(params, batch, rng) -> (loss, metrics)
  train_loader(global_batch_size, seed)   Grain loader of process-local numpy batches
  evaluate(params, workdir, history, run_info) -> results dict (and writes the report)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import losses, models
from mmjax.config import ConfigError


class ContrastiveTask:
    """CLIP (softmax) or SigLIP (sigmoid) image-text contrastive training on an image/caption dataset.

    ``config.loss = dict(kind="softmax" | "sigmoid", impl="gather" | "ring", negatives=...,
    short_negatives=..., short_weight=...)``; under a mesh the loss runs sharded over the batch axes (see
    ``mmjax.losses``). A batch with ``text_short`` (``data.extra_short_caption``: each image's caption
    naming its main object alone, besides ``text``) adds that pairing's loss with weight ``short_weight``
    (``text``'s loss: ``1 - short_weight``). ``negatives`` (for ``text``) and ``short_negatives`` (for
    ``text_short``): "all" (every other caption of the batch) or
    "minimal_pairs" (a caption naming one object is contrasted only with captions that differ from it in
    exactly one attribute: ``losses.minimal_pair_mask`` over the dataset's ``attribute_words``).
    """

    def __init__(self, config):
        self.config = config
        loss_cfg = config.get("loss", {})
        self.loss_kind, self.loss_impl = loss_cfg.get("kind", "softmax"), loss_cfg.get("impl", "gather")
        try:  # bad names fail now, not inside the first jitted step
            losses.check_loss(self.loss_kind, self.loss_impl)
        except ValueError as e:
            raise ConfigError(f"config.loss: {e}") from None
        if self.loss_kind == "sigmoid" and config.model.get("bias_init") is None:
            raise ConfigError(
                "config.loss.kind='sigmoid' needs a learned bias: set model.bias_init "
                "(SigLIP uses -10) and model.temperature_init (SigLIP uses 10)"
            )
        if self.loss_kind == "sigmoid" and config.data.get("hard_negatives"):
            raise ConfigError(
                "data.hard_negatives is only implemented for loss.kind='softmax'; "
                "set data.hard_negatives=False"
            )
        self.negatives = {key: loss_cfg.get(key, "all") for key in ("negatives", "short_negatives")}
        for key, value in self.negatives.items():
            if value not in ("all", "minimal_pairs"):
                raise ConfigError(
                    f"config.loss.{key}={value!r}; use 'all' (every other caption of the batch) "
                    "or 'minimal_pairs' (see mmjax.losses.minimal_pair_mask)"
                )
            if value == "minimal_pairs" and self.loss_kind != "softmax":
                raise ConfigError(
                    f"config.loss.{key}='minimal_pairs' is only implemented for loss.kind="
                    f"'softmax'; set loss.{key}='all'"
                )
        self.short_weight = float(loss_cfg.get("short_weight", 0.5))
        if not 0 <= self.short_weight <= 1:
            raise ConfigError(f"config.loss.short_weight={self.short_weight} is not a weight in [0, 1]")
        self.model = models.build(config.model, config.dtype)
        from mmjax.data import tokenizer as tok_lib  # lazy: the data stack, only where a task needs it

        self.tokenizer = tok_lib.get_tokenizer(config.data.tokenizer)
        self.attribute_ids = self._attribute_ids() if "minimal_pairs" in self.negatives.values() else ()
        if self.tokenizer.vocab_size > config.model.text.vocab_size:
            raise ConfigError(
                f"tokenizer {config.data.tokenizer!r} has {self.tokenizer.vocab_size} tokens but "
                f"model.text.vocab_size is {config.model.text.vocab_size}; raise model.text.vocab_size"
            )
        if config.data.max_len > config.model.text.max_len:
            raise ConfigError(
                f"data.max_len {config.data.max_len} exceeds model.text.max_len "
                f"{config.model.text.max_len}; lower data.max_len or raise the model's"
            )
        if config.data.image_size != config.model.image_size:
            raise ConfigError(
                f"data.image_size {config.data.image_size} differs from model.image_size "
                f"{config.model.image_size}; make them equal"
            )
        if config.data.get("images_per_example", 1) != 1:
            raise ConfigError(
                f"data.images_per_example={config.data.images_per_example} is for task='vlm'; "
                "the contrastive task pairs one image with one text: set it to 1"
            )
        # Impossible sizes fail here, before any data is built.
        self.model.image.check((config.model.image_size,) * 2)
        self.model.text.check(config.data.max_len)

    def _mask(self, tokens, key: str):
        """The negative mask of the captions ``tokens`` under ``loss.<key>`` (None: every pair)."""
        if self.negatives[key] == "all":
            return None
        return losses.minimal_pair_mask(tokens, self.attribute_ids)

    def _attribute_ids(self) -> tuple[tuple[int, ...], ...]:
        """Token ids of the dataset's attribute words (``Dataset.attribute_words``), one tuple per attribute;
        each word must be one token of the tokenizer."""
        from mmjax.data import registry  # lazy: the dataset registry (no Grain, no TFDS)

        groups = registry.attribute_words(self.config.data)
        if not groups:
            raise ConfigError(
                f"config.loss.negatives='minimal_pairs' needs the attribute words of dataset "
                f"{self.config.data.get('name', 'shapes')!r}, which names none; "
                "set loss.negatives='all'"
            )
        ids = []
        for words in groups:
            encoded = [self.tokenizer.encode(w) for w in words]
            if any(len(e) != 1 for e in encoded):
                raise ConfigError(
                    f"config.loss.negatives='minimal_pairs': tokenizer {self.config.data.tokenizer!r} "
                    "splits an attribute word into several tokens; use a word-level tokenizer "
                    "or loss.negatives='all'"
                )
            ids.append(tuple(e[0] for e in encoded))
        return tuple(ids)

    def batch_spec(self, batch_size: int) -> dict:
        s, length = self.config.data.image_size, self.config.data.max_len
        return {
            "image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32),
            "text": jax.ShapeDtypeStruct((batch_size, length), jnp.int32),
        }

    def init(self, rng):
        spec = self.batch_spec(1)
        return self.model.init(rng, jnp.zeros(spec["image"].shape), jnp.zeros(spec["text"].shape, jnp.int32))[
            "params"
        ]

    def loss(self, params, batch, rng):
        del rng  # deterministic forward pass
        out, _ = self.model.apply({"params": params}, batch["image"], batch["text"])
        negatives = None
        if "text_neg" in batch:
            negatives, _ = self.model.apply({"params": params}, batch["text_neg"], method="encode_text")
        loss, metrics = losses.contrastive_loss(
            self.loss_kind,
            out,
            negatives,
            impl=self.loss_impl,
            negative_mask=self._mask(batch["text"], "negatives"),
        )
        if "text_short" in batch:  # a second caption per image, the main object alone: its own loss
            short, _ = self.model.apply({"params": params}, batch["text_short"], method="encode_text")
            image = out.get("image_object", out["image"])  # the object head, where the model has one
            short_loss, short_metrics = losses.contrastive_loss(
                self.loss_kind,
                dict(out, image=image, text=short),
                impl=self.loss_impl,
                negative_mask=self._mask(batch["text_short"], "short_negatives"),
            )
            loss = (1 - self.short_weight) * loss + self.short_weight * short_loss
            metrics.update({f"short_{k}": v for k, v in short_metrics.items()})
        metrics["logit_scale"] = out["logit_scale"]
        if "logit_bias" in out:
            metrics["logit_bias"] = out["logit_bias"]
        return loss, metrics

    def train_loader(self, global_batch_size: int, seed: int):
        from mmjax.data import loaders  # lazy: the data stack, only where a task reads data

        return loaders.train_loader(
            self.config.data, tokenizer=self.tokenizer, global_batch_size=global_batch_size, seed=seed
        )

    def evaluate(self, params, workdir: str, history: list[dict], run_info: dict) -> dict:
        from mmjax.evaluate import contrastive

        return contrastive.evaluate(self, params, workdir, history, run_info)


class VlmTask:
    """Image-conditioned text generation: captioning and VQA with a fusion model (``model.type``
    ``early_fusion`` or ``deep_fusion``; ``lm``: the LM alone, blind to the image). A batch row is
    ``[BOS] [IMG]*N prompt [SEP] answer [EOT]`` (a caption prompt and a caption, or a question and its
    answer; ``data.caption_prob`` mixes them; with ``data.images_per_example=2`` a row has two images
    and its text names the one it asks about); the loss is the token cross-entropy on the answer only.
    Evaluation generates captions and answers (``mmjax.evaluate.vlm``).

    ``loss.prior_from=RUN`` (a blind LM's run, ``configs/lm_shapes.py``, built as that run was from its
    saved config, so it may differ in size from this model's LM): in training only, the frozen
    blind LM's log-probabilities of the same text (``[IMG]`` placeholders left out) are added to the
    model's logits before the cross-entropy, times ``loss.prior_weight`` -- a product of experts (Clark et
    al. 2019, "Don't take the easy way out"). What the question's words alone predict ("red objects are
    never circles", learned from the held-out pairs' absence) is then already explained, so the model is
    not rewarded for learning it and learns what the image adds; evaluation and generation use the model
    alone. ``loss.prior_groups`` (e.g. ``("red green blue", "circle square")``: groups of one-token
    answer words) keeps the prior to the choice *within* a group: a grouped word's prior is its
    probability among its group's words, every other token gets none. The blind LM then no longer
    explains what kind of answer a question takes, or where it ends, which the model must learn itself
    (with the whole vocabulary as the prior it never does: docs/vqa_learning.md, section 6).
    """

    def __init__(self, config):
        from mmjax.data import layout
        from mmjax.data import tokenizer as tok_lib

        self.config = config
        self.tokenizer = tok = tok_lib.get_tokenizer(config.data.tokenizer)
        self.model = models.build(
            config.model,
            config.dtype,
            image_id=tok.image_id,
            sep_id=tok.sep_id,
            pad_id=tok.pad_id,
            eot_id=tok.eot_id,
        )
        if tok.vocab_size > config.model.lm.vocab_size:
            raise ConfigError(
                f"tokenizer {config.data.tokenizer!r} has {tok.vocab_size} tokens but "
                f"model.lm.vocab_size is {config.model.lm.vocab_size}; raise model.lm.vocab_size"
            )
        if config.data.image_size != config.model.image_size:
            raise ConfigError(
                f"data.image_size {config.data.image_size} differs from model.image_size "
                f"{config.model.image_size}; make them equal"
            )
        self.images_per_example = layout.images_per_example(config.data)
        # [IMG] placeholders per row, for all of its images (the model's count checks the sizes)
        self.num_image_tokens = self.model.num_image_tokens(config.model.image_size) * self.images_per_example
        layout.encode_vlm(tok, self.num_image_tokens, config.data.caption_prompt, "", config.data.max_len)
        loss_cfg = config.get("loss", {})
        self.prior_weight = float(loss_cfg.get("prior_weight", 1.0))
        self.prior = (
            self._load_prior(loss_cfg.get("prior_from"), config) if loss_cfg.get("prior_from") else None
        )
        groups = loss_cfg.get("prior_groups", ()) if self.prior is not None else ()  # only a prior uses them
        self.prior_groups = self._group_matrix(groups, config.model.lm.vocab_size)

    def _group_matrix(self, groups, vocab_size: int):
        """``[vocab, groups]`` one-hot membership of ``loss.prior_groups``'s words (None: no groups)."""
        if not groups:
            return None
        member = np.zeros((vocab_size, len(groups)), np.float32)
        for g, group in enumerate(groups):
            for word in group.split():
                ids = self.tokenizer.encode(word)
                if len(ids) != 1 or ids[0] == getattr(self.tokenizer, "unk_id", None):
                    raise ConfigError(
                        f"loss.prior_groups: {word!r} is not one token of {self.config.data.tokenizer!r} "
                        f"(ids {ids}); list one-token answer words only"
                    )
                if member[ids[0]].any():
                    raise ConfigError(f"loss.prior_groups: {word!r} is in more than one group; keep one")
                member[ids[0], g] = 1.0
        return member

    def _load_prior(self, workdir: str, config):
        """``(blind LM module, its parameters)`` from run ``workdir``, built as that run was (its saved
        config's LM, in this run's dtype), so the prior may be smaller or larger than this model's LM; it
        must share this run's tokenizer."""
        import flax.linen as nn

        from mmjax import checkpoint

        train = f"python -m mmjax.train --config=configs/lm_shapes.py --workdir={workdir}"
        fix = f"train the blind LM first: {train}"
        try:
            saved, step = checkpoint.saved_config(workdir, fix=fix)
        except ConfigError as e:  # most often: the blind LM not trained yet
            raise ConfigError(f"loss.prior_from={workdir}: {e}") from None
        if saved.data.get("tokenizer") != config.data.tokenizer:
            raise ConfigError(
                f"loss.prior_from={workdir}: that run's tokenizer {saved.data.get('tokenizer')!r} is not "
                f"this run's {config.data.tokenizer!r}; train the blind LM on this run's data"
            )
        tok = self.tokenizer
        blind = models.build(  # its turns laid out as this run's model lays them out
            dict(type="lm", lm=saved.model.lm, turns=config.model.get("turns", "conversation")),
            config.dtype,
            image_id=tok.image_id,
            sep_id=tok.sep_id,
            pad_id=tok.pad_id,
            eot_id=tok.eot_id,
        )
        tokens = jnp.zeros((1, config.data.max_len), jnp.int32)
        shapes = jax.eval_shape(lambda: nn.unbox(blind.init(jax.random.key(0), None, tokens)["params"]))
        return blind, checkpoint.load_params(workdir, shapes, (".*",), step=step)

    def prior_logits(self, tokens):
        """The blind LM's log-probabilities for each position of ``tokens``, as if the ``[IMG]``
        placeholders were not there (they are moved to the end as padding, and the results moved back);
        at the placeholders themselves the values are meaningless (never an answer position)."""
        blind, params = self.prior
        tok = self.tokenizer
        order = jnp.argsort(tokens == tok.image_id, axis=1, stable=True)  # text first, in order
        text = jnp.take_along_axis(tokens, order, axis=1)
        text = jnp.where(text == tok.image_id, tok.pad_id, text)
        logits, _ = blind.apply({"params": params}, None, text)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if self.prior_groups is not None:  # log p(word | its group); no prior outside the groups
            member = jnp.asarray(self.prior_groups)
            group_mass = jnp.log(jnp.maximum(jnp.exp(logp) @ member, 1e-30))  # [B, S, groups]
            grouped = member.sum(axis=1) > 0
            logp = jnp.where(grouped, logp - group_mass @ member.T, 0.0)
        rows = jnp.arange(tokens.shape[0])[:, None]
        return jax.lax.stop_gradient(jnp.zeros_like(logp).at[rows, order].set(logp))

    def batch_spec(self, batch_size: int) -> dict:
        s, t = self.config.data.image_size, self.images_per_example
        return {
            "image": jax.ShapeDtypeStruct((batch_size, *(t,) * (t > 1), s, s, 3), jnp.float32),
            "tokens": jax.ShapeDtypeStruct((batch_size, self.config.data.max_len), jnp.int32),
        }

    def init(self, rng):
        spec = self.batch_spec(1)
        return self.model.init(
            rng, jnp.zeros(spec["image"].shape), jnp.zeros(spec["tokens"].shape, jnp.int32)
        )["params"]

    def loss(self, params, batch, rng):
        del rng  # deterministic forward pass
        tokens = batch["tokens"]
        logits, _ = self.model.apply({"params": params}, batch["image"], tokens)
        tok = self.tokenizer
        weights = losses.answer_weights(tokens, tok.sep_id, tok.eot_id, tok.pad_id)
        if self.prior is not None:  # a product of experts with the blind LM (training only)
            logits = logits.astype(jnp.float32) + self.prior_weight * self.prior_logits(tokens)
        return losses.lm_loss(logits[:, :-1], tokens[:, 1:], weights)

    def train_loader(self, global_batch_size: int, seed: int):
        from mmjax.data import loaders, transforms  # lazy: the data stack, only where a task reads data

        return loaders.train_loader(
            self.config.data,
            tokenizer=self.tokenizer,
            global_batch_size=global_batch_size,
            seed=seed,
            preprocess=transforms.vlm_preprocess(self.config.data, self.tokenizer, self.num_image_tokens),
        )

    def evaluate(self, params, workdir: str, history: list[dict], run_info: dict) -> dict:
        from mmjax.evaluate import vlm

        return vlm.evaluate(self, params, workdir, history, run_info)


TASKS = {"contrastive": ContrastiveTask, "vlm": VlmTask}


def get_task(config):
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; known tasks: {', '.join(TASKS)}")
    try:
        return TASKS[config.task](config)
    except ConfigError:
        raise
    except ValueError as e:  # impossible model sizes, unknown names: the user's config is at fault
        raise ConfigError(str(e)) from None


def from_run(workdir: str, step: int | None = None):
    """``(config, task, params)`` of a trained run, for analyses of it: the config saved with checkpoint
    ``step`` (default: the latest; overrides included, so nothing has to be repeated), the task it builds
    and all its parameters from that checkpoint."""
    import flax.linen as nn

    from mmjax import checkpoint

    config, step = checkpoint.saved_config(workdir, step)
    task = get_task(config)
    shapes = jax.eval_shape(lambda: nn.unbox(task.init(jax.random.key(0))))  # all are loaded: shapes only
    return config, task, checkpoint.load_params(workdir, shapes, (".*",), step=step)
