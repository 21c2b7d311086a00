"""Train a GPT with AdamW or a Muon hybrid: ``train_gpt`` and its settings ``GPTRunConfig``.

Data -> :class:`muonlab.models.gpt.GPT` -> :func:`gpt_optimizer` -> :func:`train`. The same
seed gives both optimizers the same initial weights, the same training batches in the same
order and the same validation batches (drawn once with seed ``val_seed``). The ``muonkit
train`` command (:mod:`muonlab.cli.train`) builds a ``GPTRunConfig`` from its flags.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from muonkit import registry
from muonkit.options import MuonOptions
from muonkit.qk_clip import QKClip, clip_layers
from muonkit.registry import MUON

from ..data.text import (
    BUNDLED,
    TokenBatches,
    TokenData,
    check_fits,
    fixed_batches,
    load_text,
)
from ..models.gpt import GPT, GPTConfig, preset_config
from ..models.lora import add_lora
from .config import (
    MACHINE,
    MFU,
    STEPS,
    WHERE_SHOWN,
    TrainConfig,
    TrainResult,
    may_differ_on_resume,
    resolve_device,
    resolve_dtype,
)
from .finetune import (
    BaseRun,
    Task,
    load_base_state,
    load_base_weights,
    source_evaluator,
    task_evaluator,
)
from .loop import train
from .settings import GROUP_LABELS, check_settings, flag_names, setting, settings_of, show
from .step import autocast_context, lm_loss
from .trackers import resolve_trackers

# How `muonkit train` names each recorded setting whose name is not simply its flag (see
# muonlab.train.files.setting_name; a resume names each differing setting by these), beyond
# the GPTRunConfig fields and loop settings the config tree names (FLAG_NAMES, below).
RECORDED_FLAGS = {
    "momentum_warmup_steps": "--momentum-warmup",
    "optimizer_options.momentum": "--muon-momentum",
    "optimizer_options.betas": "--beta2",
    "optimizer_options.rank": "--rank",
    "model.vocab_size": "--data (its vocabulary)",
    "data.vocab_size": "--data (its vocabulary)",
    "data.source": "--data",
    "data.train_tokens": "--data (its size)",
    "data.val_tokens": "--data (its size)",
    "data.token_hash": "--data (its contents)",
    "data.corpus_sha256": "--data (its contents)",
    "role": "the run's role in its study (tune or report)",
    "model.tie_weights": "--untied (weights tied)",
    "model_settings.tie_weights": "--untied (weights tied)",
    "model.n_layer": "--preset",
    "model.n_head": "--preset",
    "model.n_embd": "--preset",
    "model.bias": "--preset",
    "model.rope_base": "--rope",
    "params": "the model (its parameter count)",
    "world_size": "--nproc_per_node (torchrun)",
    "lora.rank": "--lora-rank",
    "lora.alpha": "--lora-alpha",
    "lora.modules": "--lora-rank",
    "lora.trainable_params": "--lora-rank",
    "init_from.run": "--init-from",
    "init_from.optimizer": "--init-from (its optimizer)",
    "init_from.final_val_loss": "--init-from (its final val loss)",
    "task.name": "--task",
    "task.n_train": "--task-train",
    "task.n_test": "--task-test",
    "task.max_new_tokens": "--task-max-tokens",
    "trackers": "--tracker",
}

# Recorded facts that follow from the settings (the model's shape from --preset and its
# overrides, the data's vocabulary, size and contents from --data and --tokenizer, the
# parameter count, LoRA's alpha from --lora-rank unless --lora-alpha is given): a resume names
# them only when no setting differs, e.g. when the data file or the code changed, or
# --lora-alpha alone (muonlab.train.files.resume_differences).
DERIVED = ("model", "params", "data.vocab_size", "data.train_tokens", "data.val_tokens",
           "data.token_hash", "data.corpus_sha256", "lora.alpha", "lora.modules",
           "lora.trainable_params", "init_from.optimizer", "init_from.final_val_loss")


@dataclass(frozen=True)
class GPTRunConfig:
    """Model, data, loop and optimizer settings of GPT runs (the flags of ``muonkit train``;
    experiments such as ``compare`` build on it). One config serves both optimizers: see
    :meth:`optimizer_options` and :meth:`train_config` for what each one takes.

    ``lr``, ``beta2``, ``weight_decay``: AdamW (the baseline, and the hybrid's AdamW groups);
    ``muon_*``: the hybrid's Muon groups; ``momentum_warmup``: Muon momentum 0.85 ->
    ``muon_momentum`` over that many steps; ``warmup``, ``decay``, ``min_lr_ratio``: the LR
    schedule of every group; ``untied``: a separate ``lm_head`` weight; ``threads``: torch
    intra-op threads (None: leave torch's setting); ``trackers``, ``wandb_*``: see
    :class:`TrainConfig` (names checked, and installed, here); ``rank``: LoRA-Pre's momentum
    rank (optimizer "lorapre" only); ``muon_options``: further :class:`muonkit.MuonOptions` of
    the Muon groups (``{"ns_steps": 3, "ns_dtype": "float32"}``: the ``--ns-*`` flags; their
    momentum and weight decay are ``muon_momentum`` and ``muon_weight_decay``); ``qk_clip``:
    QK-clip's threshold tau (None: off; :func:`train_gpt`).

    On resume every field must equal the run's except those marked
    :func:`~muonlab.train.config.may_differ_on_resume` (``steps`` to train on, the machine,
    what is shown and tracked); ``rank`` and ``lora_alpha`` count where they apply (a LoRA-Pre
    optimizer, LoRA adapters).
    """

    preset: str = setting("preset")
    data: str = setting("data")
    tokenizer: str = setting("tokenizer")
    steps: int = setting("steps", resume=STEPS)
    batch_size: int = setting("batch_size")
    grad_accum: int = setting("grad_accum")
    block_size: int | None = setting("block_size")
    dropout: float | None = setting("dropout")
    rope: bool = setting("rope")
    untied: bool = setting("untied")
    warmup: int = setting("warmup")
    decay: str = setting("decay")
    min_lr_ratio: float = setting("min_lr_ratio")
    grad_clip: float = setting("grad_clip")
    eval_every: int = setting("eval_every")
    eval_batches: int = setting("eval_batches")
    device: str = setting("device", resume=MACHINE)
    dtype: str = setting("dtype")
    compile: bool = setting("compile")
    peak_flops: float | None = setting("peak_flops", resume=MFU)
    progress: bool = setting("progress", resume=WHERE_SHOWN)
    trackers: tuple[str, ...] | None = may_differ_on_resume(WHERE_SHOWN, None)
    wandb_project: str = may_differ_on_resume(WHERE_SHOWN, "muonkit")
    wandb_run_name: str | None = may_differ_on_resume(WHERE_SHOWN, None)
    threads: int | None = setting("threads", resume=MACHINE)
    lr: float = setting("lr")
    beta2: float = setting("beta2")
    weight_decay: float = setting("weight_decay")
    muon_lr: float = setting("muon_lr")
    embedding_lr: float | None = setting("embedding_lr")
    head_lr: float | None = setting("head_lr")
    vector_lr: float | None = setting("vector_lr")
    muon_momentum: float = setting("muon_momentum")
    momentum_warmup: int = setting("momentum_warmup")
    muon_weight_decay: float = setting("muon_weight_decay")
    qkv_split: bool = setting("qkv_split")
    rank: int = setting("rank")
    lora_rank: int = setting("lora_rank")
    lora_alpha: float | None = setting("lora_alpha")
    qk_clip: float | None = setting("qk_clip")
    muon_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        check_settings(self)
        resolve_device(self.device)  # an unknown or unavailable device fails here, not later
        if self.trackers is not None:
            resolve_trackers(self.trackers)
        own = sorted({"momentum", "weight_decay"} & set(self.muon_options))
        if own:
            raise ValueError(f"muon_options {own}: set them with --muon-momentum, "
                             "--muon-weight-decay")
        MuonOptions(**self.muon_options)  # checked here, not when the optimizer is built
        if self.warmup >= self.steps and "warmup" in self.changed():  # the default: short runs
            raise ValueError(f"--warmup {self.warmup} must be below --steps {self.steps}: the "
                             "run would end inside its LR warmup")
        if self.decay == "constant" and "min_lr_ratio" in self.changed():
            raise ValueError(f"--min-lr-ratio {self.min_lr_ratio:g} does nothing with --decay "
                             "constant (the LR does not decay)")
        if self.head_lr is not None and not self.untied:
            raise ValueError(f"--head-lr {self.head_lr:g} does nothing: the output head is tied "
                             "to the embedding (it trains at --embedding-lr); add --untied")
        if self.lora_alpha is not None and not self.lora_rank:
            raise ValueError(f"--lora-alpha {self.lora_alpha:g} does nothing without "
                             "--lora-rank (no LoRA adapters)")

    def changed(self) -> dict[str, str]:
        """{field: its flag and value} of the settings (the ``--ns-*`` flags included) that
        differ from their defaults, as a message writes them."""
        out = {name: f"{s.flag_of(name)}" + ("" if s.kind is bool else f" {show(value)}")
               for name, s in settings_of(GPTRunConfig).items()
               if (value := getattr(self, name)) != s.default}
        for name, value in MuonOptions.changes(self.muon_options).items():
            out[name] = f"--{name.replace('_', '-')} {MuonOptions.word_of(name, value)}"
        return out

    def refuse_ignored(self, optimizers: list[str], flag: str = "--optimizer") -> None:
        """Refuse a setting given (not its default) that none of ``optimizers`` reads (the Muon
        settings with AdamW alone, ``--rank`` without a low-rank optimizer), naming both
        flags: it would change nothing."""
        specs = [registry.get(o) for o in optimizers]
        for name, given in self.changed().items():
            reads = READ_BY.get(name, READ_BY["muon_options"] if name in MuonOptions.names()
                                else None)
            if reads is not None and not any(reads(spec) for spec in specs):
                readers = [n for n, spec in registry.OPTIMIZERS.items() if reads(spec)]
                raise ValueError(f"{given} does nothing with {flag} {' '.join(optimizers)}; "
                                 f"it is read by --optimizer {' or '.join(readers)}")

    def model_overrides(self) -> dict:
        """Keyword arguments of :func:`muonlab.models.gpt.preset_config` beyond the preset."""
        out = {"rope": self.rope, "tie_weights": not self.untied}
        if self.dropout is not None:
            out["dropout"] = self.dropout
        return out

    def optimizer_options(self, optimizer: str) -> dict:
        """Keyword arguments of :func:`gpt_optimizer` for ``optimizer``."""
        opts = dict(lr=self.lr, betas=(0.9, self.beta2), weight_decay=self.weight_decay)
        # recorded when unset too (None: --lr), so that a resume setting one is refused
        opts |= {f"{role}_lr": getattr(self, f"{role}_lr") for role in GROUP_LABELS}
        spec = registry.get(optimizer)
        if spec.is_muon:  # the hybrids: muon, normuon, the memory-saving variants
            opts.update(
                muon_lr=self.muon_lr,
                momentum=self.muon_momentum,
                muon_weight_decay=self.muon_weight_decay,
                qkv_split=self.qkv_split,
                **self.muon_options,
            )
        if spec.takes_rank:
            opts["rank"] = self.rank
        return opts

    def train_config(
        self, optimizer: str, out_dir: str | None, seed: int, **changes
    ) -> TrainConfig:
        """The loop's settings of one run of ``optimizer``; ``changes`` override fields of the
        :class:`TrainConfig` (e.g. ``steps``, ``resume``, ``checkpoint_every``)."""
        loop = {s.loop: getattr(self, name) for name, s in settings_of(GPTRunConfig).items()
                if s.loop}
        cfg = TrainConfig(
            **loop,
            momentum_warmup_steps=self.momentum_warmup if registry.get(optimizer).is_muon else 0,
            out_dir=out_dir,
            run_name=f"{self.preset}-{optimizer}-s{seed}",
            trackers=self.trackers,
            wandb_project=self.wandb_project,
            wandb_run_name=self.wandb_run_name,
            seed=seed,
        )
        return dataclasses.replace(cfg, **changes)

    def load_data(self) -> tuple[TokenData, GPTConfig]:
        """The checked data and model config of these settings (:func:`load_gpt_data`)."""
        return load_gpt_data(self.data, self.tokenizer, self.preset, self.batch_size,
                             self.block_size, self.model_overrides())

    def train_gpt_kwargs(self, optimizer: str, train_config: TrainConfig) -> dict:
        """The keyword arguments of :func:`train_gpt` for one run of ``optimizer``."""
        return dict(
            optimizer=optimizer,
            preset=self.preset,
            data=self.data,
            tokenizer=self.tokenizer,
            batch_size=self.batch_size,
            block_size=self.block_size,
            eval_batches=self.eval_batches,
            model_overrides=self.model_overrides(),
            optimizer_options=self.optimizer_options(optimizer),
            train_config=train_config,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            qk_clip=self.qk_clip,
        )


FLAG_NAMES = {**flag_names(GPTRunConfig), **RECORDED_FLAGS}

# the settings that only some optimizers read: field -> which specs read it (muon_options: the
# --ns-* flags)
READ_BY = {
    **dict.fromkeys(("muon_lr", "muon_momentum", "momentum_warmup", "muon_weight_decay",
                     "qkv_split", "muon_options"), lambda spec: spec.is_muon),
    "rank": lambda spec: spec.takes_rank,
}


def load_gpt_data(
    data: str = BUNDLED,
    tokenizer: str = "char",
    preset: str = "tiny",
    batch_size: int = 12,
    block_size: int | None = None,
    model_overrides: dict | None = None,
    base: BaseRun | None = None,
) -> tuple[TokenData, GPTConfig]:
    """The tokens of ``data`` and the GPT config they give (``base``: the fine-tuned run's,
    whose vocabulary the data must have), with every check a GPT run's inputs can fail: the
    data (readable, token ids inside the vocabulary), the model settings, a batch that fits
    each split. :func:`train_gpt` calls it first, and the experiments before they write or
    replace anything."""
    tokens = load_text(data, tokenizer)
    if base is None:
        overrides = dict(model_overrides or {})
        if block_size is not None:
            overrides["block_size"] = block_size
        config = preset_config(preset, vocab_size=tokens.vocab_size, **overrides)
    else:
        config = GPTConfig(**base.settings["model"])
        check_same_vocabulary(tokens, base)
    check_fits(tokens.train, batch_size, config.block_size, "train")
    check_fits(tokens.val, batch_size, config.block_size, "val")
    return tokens, config


def gpt_optimizer(model: GPT, optimizer: str, **options) -> torch.optim.Optimizer:
    """:func:`muonkit.registry.build_optimizer` for the GPT (``options``: its keywords). An
    optimizer that keeps dense momentum on some matrices ("kronecker-hybrid") keeps it on the
    last block's, the block next to the head (which is AdamW's), unless ``dense`` says
    otherwise."""
    if registry.get(optimizer).takes_dense:
        last = f"blocks.{len(model.blocks) - 1}."
        options = {"dense": lambda name, p: name.startswith(last), **options}
    return registry.build_optimizer(optimizer, model, **options)


def train_gpt(
    optimizer: str = MUON,
    *,
    preset: str = "tiny",
    data: str = BUNDLED,
    tokenizer: str = "char",
    batch_size: int = 12,
    block_size: int | None = None,
    eval_batches: int = 20,
    val_seed: int = 0,
    model_overrides: dict | None = None,
    optimizer_options: dict | None = None,
    train_config: TrainConfig,
    parallel: str = "none",
    replicate: int = 1,
    monitor=None,
    base: BaseRun | None = None,
    state: str = "fresh",
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    qk_clip: float | None = None,
    task: Task | None = None,
    decode: bool = False,
    role: str | None = None,
) -> TrainResult:
    """One GPT run; ``train_config.seed`` seeds the weights and the training-batch order.

    ``model_overrides`` go to :func:`preset_config` (e.g. ``dropout``, ``rope``,
    ``tie_weights``); ``optimizer_options`` to :func:`gpt_optimizer` (``lr``,
    ``muon_lr``, ``betas``, ``weight_decay``, ...). The vocabulary size comes from the data.

    ``parallel="ddp"|"fsdp2"|"hsdp"`` (HSDP: ``replicate`` replica groups; under torchrun,
    after ``muonkit.distributed.compute_init``): every rank builds the same model, draws its
    own training batches (seed offset by rank), and the model/optimizer are wrapped by
    :mod:`muonkit.distributed.parallel`. Rank 0 writes
    the metrics (its micro-batch loss; tokens counted over all ranks); checkpoints go through
    DCP (``OUT/ckpt_dcp``) and resume with the same number of ranks.

    ``monitor(model, optimizer)``, if given, is called once both exist and returns the loop's
    ``on_eval(step, val_record, logger)`` (e.g. :class:`muonlab.experiments.rms.RMSMonitor`).

    ``base`` (:class:`muonlab.train.finetune.BaseRun`): fine-tune it: its architecture (the
    preset and overrides are ignored), its weights, and per ``state`` its optimizer state
    (:func:`muonlab.train.finetune.load_base_state`); every evaluation also scores the base's
    validation set (``source_val`` records). The data must have the base's vocabulary.
    Under ``parallel`` every rank loads the base's weights before the model is wrapped, and its
    optimizer state into the wrapped optimizer (FSDP2/HSDP: sharded as the parameters are).
    ``lora_rank`` > 0: freeze the model and train LoRA adapters of that rank on its attention
    and MLP projections (:mod:`muonlab.models.lora`; ``lora_alpha`` None: the rank, scale 1);
    they go to Muon in the hybrids, to AdamW with ``optimizer="adamw"``. ``task``
    (:class:`muonlab.train.finetune.Task`): score its test problems at step 0 and at the end
    (:func:`muonlab.train.finetune.task_evaluator`).
    ``qk_clip``: QK-clip's threshold tau (:class:`muonkit.qk_clip.QKClip`, after each optimizer
    step; None: off). Every run logs its max attention logits at each evaluation
    (:func:`max_logit_evaluator`).
    ``decode``: the caller will decode text from the trained model (:func:`sample_text`), so
    the data must have a decoder; checked with every other input before a file is written.
    ``role``: a study's run records it (``"tune"``: its seed chooses the LR; ``"report"``: a
    held-out seed the study reports), so that no report counts a tuning run.
    """
    registry.check_parallel(optimizer, parallel)  # before any data is read or file written
    tokens, config = load_gpt_data(data, tokenizer, preset, batch_size, block_size,
                                   model_overrides, base)
    if decode:
        tokens.check_decodable()
    seed = train_config.seed
    rank, world = 0, 1
    if parallel != "none":
        train_config, rank, world = _parallel_config(parallel, train_config)
    batches = TokenBatches(
        tokens.train, batch_size, config.block_size, seed=seed + 100_003 * rank, split="train"
    )
    val = fixed_batches(tokens.val, batch_size, config.block_size, eval_batches, seed=val_seed)
    torch.manual_seed(seed)
    model = GPT(config)
    if base is not None:
        load_base_weights(base, model)
    lora = None
    if lora_rank:
        if base is not None and state != "fresh":
            raise ValueError("--lora-rank: the adapters are new parameters; they start with "
                             "--state fresh")
        alpha = float(lora_rank if lora_alpha is None else lora_alpha)
        lora = {"rank": lora_rank, "alpha": alpha,
                "modules": add_lora(model, lora_rank, alpha)}
    net = model  # train() moves it to the device; a parallel one is wrapped there first
    if parallel != "none":  # before the optimizer: FSDP2 swaps in sharded (DTensor) params
        from muonkit.distributed.parallel import distribute_optimizer, parallelize

        device = resolve_device(train_config.device)  # this rank's (compute_init's) device
        net = parallelize(model.to(device), parallel, device, replicate=replicate)
    opt = gpt_optimizer(model, optimizer, **(optimizer_options or {}))
    if parallel != "none":
        opt = distribute_optimizer(opt, parallel)  # DDP's rebuilt optimizer starts empty
    if base is not None:  # so the base's state goes in after (sharded like FSDP2's params)
        load_base_state(base, model, opt, optimizer, state)
    clip = None
    if qk_clip is not None:  # the maxima reduced over the default group: every rank
        clip = QKClip(model, qk_clip)
        clip.attach(opt)
    run_config = {
        "preset": preset,
        "model": dataclasses.asdict(config),
        "data": tokens.describe(),
        "batch_size": batch_size,
        "eval_batches": eval_batches,
        "val_seed": val_seed,
        "optimizer_options": {k: _jsonable(v) for k, v in (optimizer_options or {}).items()},
        # the settings behind "model" beyond the preset (None: the preset's)
        "model_settings": {"block_size": block_size, "dropout": None, **(model_overrides or {})},
        "params": model.num_params(),
        "parallel": parallel,
        "world_size": world,
        "replicate": replicate,
        # recorded when off too, so that a resume turning them on or off is refused
        "lora": {"rank": 0, "alpha": None},
        "init_from": {"run": None},
        "task": {"name": None},
        "qk_clip": qk_clip,
    }
    if role is not None:  # a study's run: "tune" (chooses an LR) or "report" (is reported)
        run_config["role"] = role
    if lora is not None:
        run_config["lora"] = {**lora, "modules": len(lora["modules"]),
                              "trainable_params": sum(p.numel() for p in model.parameters()
                                                      if p.requires_grad)}
    on_eval = max_logit_evaluator(model, val[0], train_config.dtype, clip)
    if monitor is not None:
        on_eval = both(monitor(model, opt), on_eval)
    if base is not None:
        run_config["init_from"] = {"run": str(base.run_dir), "optimizer": base.optimizer,
                                   "state": state, "final_val_loss": base.final_val_loss}
        on_eval = both(on_eval, source_evaluator(base, model, train_config.dtype))
    if task is not None:
        out_dir = None if train_config.out_dir is None else Path(train_config.out_dir)
        on_eval = both(on_eval, task_evaluator(task, model, tokens, out_dir, train_config.steps,
                                               write=rank == 0))
        run_config["task"] = {"name": task.name, **task.source, "n_train": len(task.train),
                              "n_test": len(task.test), "max_new_tokens": task.max_new_tokens}
    result = train(
        net,
        opt,
        batches,
        lm_loss,
        train_config,
        val_batches=val,
        flops_per_token=model.estimate_flops_per_token(),
        optimizer_name=optimizer,
        run_config=run_config,
        flag_names=FLAG_NAMES,
        derived=DERIVED,
        count_tokens=lambda batch: world * int(batch[-1].numel()),
        on_eval=on_eval,
    )
    result.extra.update(model=model, data=tokens)
    return result


def check_same_vocabulary(tokens, base: BaseRun) -> None:
    """Refuse fine-tuning data whose token ids mean other things than the base's."""
    data = base.settings["data"]
    same = tokens.vocab_size == data["vocab_size"] and tokens.tokenizer == data["tokenizer"]
    if same and tokens.itos is not None:
        same = base.source_tokens.itos == tokens.itos
    if not same:
        raise ValueError(
            f"--data {tokens.source}: its vocabulary ({tokens.tokenizer}, {tokens.vocab_size} "
            f"ids) is not the base run's ({data['tokenizer']}, {data['vocab_size']} ids, from "
            f"{data['source']}); a byte tokenizer (--tokenizer byte) reads any text the same way")


def max_logit_evaluator(model: GPT, batch, dtype: str, clip: QKClip | None = None):
    """``on_eval`` for the loop: after each evaluation, a ``max_logits`` record: per layer
    (``layers``) and overall (``max_logit``), the largest pre-softmax attention logit of
    ``model`` on ``batch`` (the first validation batch: the same tokens each time; one forward
    more per evaluation, autocast as ``dtype`` resolves); with QK-clip (``clip``) also its
    ``tau`` and ``step_layers``, the last step's per-layer maxima before its clip."""
    layers = clip_layers(model)

    def on_eval(step: int, record: dict, logger) -> None:
        device = next(model.parameters()).device
        recording = [layer.record_max_logits for layer in layers]
        for layer in layers:
            layer.reset_max_logits()
            layer.record_max_logits = True
        was_training = model.training
        model.eval()
        with torch.no_grad(), autocast_context(device, resolve_dtype(dtype, device)):
            model(batch[0].to(device))
        model.train(was_training)
        seen = [float(layer.max_logits.max()) for layer in layers]
        for layer, on in zip(layers, recording, strict=True):
            layer.reset_max_logits()
            layer.record_max_logits = on
        out = {"kind": "max_logits", "step": step, "max_logit": max(seen), "layers": seen}
        if clip is not None:
            out["tau"] = clip.tau
            if clip.last_max_logits is not None:
                out["step_layers"] = clip.last_max_logits.amax(dim=1).tolist()
        logger.write(out)

    return on_eval


def both(first, second):
    """One ``on_eval`` that calls ``first`` (if any), then ``second``."""
    if first is None:
        return second

    def on_eval(step, record, logger):
        first(step, record, logger)
        second(step, record, logger)

    return on_eval


def sample_text(model: GPT, data, n: int, seed: int = 0, top_k: int = 200) -> str:
    """``n`` tokens sampled from ``model`` after the first token of the val split."""
    device = next(model.parameters()).device
    start = torch.tensor([[int(data.val[0])]], device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    return data.decode(model.generate(start, n, top_k=top_k, generator=gen)[0].tolist())


def _parallel_config(parallel: str, cfg: TrainConfig) -> tuple[TrainConfig, int, int]:
    """Check the process group; only rank 0 shows progress (and the loop lets only rank 0
    write metrics; every rank writes its part of a checkpoint)."""
    import torch.distributed as dist

    from muonkit.distributed.parallel import check_mode

    check_mode(parallel)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank != 0:
        cfg = dataclasses.replace(cfg, progress=False)
    return cfg, rank, world


def _jsonable(v):
    try:
        json.dumps(v)
        return v
    except TypeError:
        return repr(v)


