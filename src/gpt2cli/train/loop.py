"""The training loop: a generator of progress events (events.py) that the CLI renders.

What makes a run resumable to the bit (fp32 on the CPU):
- the k-th batch is a pure function of (seed, k) (ShardReader), and the
  reader's position is saved;
- the model is initialised from the seed, then every tensor that changes
  during training (weights, AdamW moments and step counts) and every RNG
  state (dropout masks) is saved at a step boundary and restored exactly;
- the learning rate is a function of the step number alone;
- evals and samples draw no numbers from the global RNG (samples use their
  own generators; the global state is restored around them anyway).

What keeps a run's results safe:
- checkpoints are written to a temporary name and renamed (atomic.py), the
  resume state first: it alone is a consistent resume point (state.py);
- SIGINT/SIGTERM end the step in progress, save, and finish with reason
  "interrupted";
- a non-finite loss or gradient skips that update (the fused AdamW kernel
  takes a found-inf flag, so no host sync is needed to decide) and, beyond
  `skip_nonfinite` such steps, stops with NonFiniteError before anything is
  saved, so the last good checkpoint stays as it was.

Host syncs (.item()) happen only at log, eval and save steps (and, with
several ranks, one small all-reduce per step so all ranks agree to stop or to
skip a non-finite step).

Data parallel (torchrun; distributed.py): every rank runs this loop on its
rows of the global batch; only rank 0 logs, evaluates samples and writes
files. The files are the same as a single process writes, so a run resumes
with any number of ranks (keep the global batch: --batch-size x ranks).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gpt2cli.analysis.alarms import mismatch_check
from gpt2cli.analysis.text_metrics import generation_metrics
from gpt2cli.checkpoint import save_checkpoint
from gpt2cli.config import RunConfig
from gpt2cli.errors import UserError
from gpt2cli.threads import refit_cpu_threads
from gpt2cli.train import distributed, events
from gpt2cli.train.flops import flops_per_token, mfu
from gpt2cli.train.optim import build_optimizer, parameter_names
from gpt2cli.train.run_dir import RunDir, read_jsonl
from gpt2cli.train.schedule import lr_at
from gpt2cli.train.signals import stop_on_signals
from gpt2cli.train.state import Progress, load_resume_state, read_resume_moments, save_resume_state
from gpt2cli.train.step import autocast_context, train_step
from gpt2cli.weights_source import WeightsSource, load_into

Event = events.Started | events.Logged | events.Evaluated | events.Saved | events.Finished

# Seed offset of the fixed train-split batches that eval measures the train loss on.
EVAL_TRAIN_SEED_OFFSET = 1


class NonFiniteError(UserError):
    """The loss or gradients stopped being finite more often than --skip-nonfinite allows."""


@dataclass
class TrainSetup:
    """A resolved run, ready to train (plan.py turns flags into one)."""

    run: RunConfig
    data_dir: Path
    run_dir: RunDir
    resume: bool = False
    notes: list[str] = field(default_factory=list)
    fsdp: bool = False  # shard weights, gradients and AdamW state over the ranks (FSDP2)
    init: WeightsSource | None = None  # pretrained weights to start from (fresh runs only)
    log: list[str] = field(default_factory=list)  # logging backends besides metrics.jsonl (loggers.py)


def open_reader(
    data_dir: Path, split: str, batch_size: int, block_size: int, seed: int, rank: int = 0, world_size: int = 1
):
    from gpt2cli.data.reader import ShardReader

    return ShardReader(data_dir, split, batch_size, block_size, seed, rank, world_size)


def dtype_label(amp_dtype: torch.dtype | None, scaler_on: bool) -> str:
    if amp_dtype is None:
        return "fp32"
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    return f"{name} autocast" + (" + grad scaler" if scaler_on else "")


class Trainer:
    """Owns the model, optimizer, data and files of one run; `run()` is the loop."""

    def __init__(self, setup: TrainSetup):
        from gpt2cli.device import autocast_dtype, resolve_device
        from gpt2cli.model import GPT

        self.setup = setup
        self.cfg = setup.run.train
        self.model_cfg = setup.run.model
        self.files = setup.run_dir
        cfg = self.cfg
        self.dist, self.device = distributed.init_from_env(resolve_device(cfg.device), fsdp=setup.fsdp)
        self.amp_dtype = autocast_dtype(self.device, cfg.dtype)
        if self.device.type == "cuda" and cfg.dtype != "fp32":
            # TF32 matmuls on Ampere+; an explicit fp32 request keeps full fp32.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.scaler = None
        if self.amp_dtype == torch.float16:
            # fp16's narrow range needs loss scaling (Micikevicius et al. 2018).
            self.scaler = torch.amp.GradScaler(self.device.type)
        fsdp, main = self.dist.fsdp, self.dist.is_main
        if fsdp and self.scaler is not None:
            raise UserError("--fsdp with --dtype fp16: use --dtype bf16 or fp32 (no loss scaling for sharded weights)")

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        model = GPT(self.model_cfg, init=setup.init is None)
        if setup.init is not None:
            load_into(model, setup.init)
        self.model = model.to(self.device)
        self.model.activation_checkpointing = cfg.activation_checkpointing
        self.model.train()
        self.num_params = self.model.num_params()
        self.progress = Progress()
        if setup.resume and fsdp:
            # The resume state holds full tensors: load the weights before sharding, the moments after.
            self.progress = load_resume_state(self.files.resume_state, self.model, None, scaler=self.scaler)
        self.loss_choice = self._choose_loss()
        self.loss_fn = distributed.wrap_model(
            self.model, self.dist, self.device, self.amp_dtype, full=self.loss_choice.full
        )
        # The eval losses are always chunked: eager and without gradients, the
        # whole logits would only cost memory. Under FSDP they run through the
        # sharded root on every rank.
        self.eval_loss_fn = functools.partial(self.loss_fn, full=False) if fsdp else self.model.loss
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg, self.device, allow_fused=not fsdp)
        if cfg.compile:
            self.loss_fn = torch.compile(self.loss_fn)
        self.sync_context = None
        self.agree = None
        if self.dist.enabled:
            self.sync_context = lambda last: distributed.micro_step_context(self.loss_fn, self.dist, last)
            self.agree = lambda flag: distributed.any_rank(flag, self.dist, self.device)

        B, T = cfg.batch_size, cfg.block_size
        self.reader = open_reader(
            setup.data_dir, "train", B, T, cfg.seed, self.dist.rank, self.dist.world_size
        )
        self.eval_batches = self._fixed_batches("val", cfg.seed)
        self.eval_train_batches = self._fixed_batches("train", cfg.seed + EVAL_TRAIN_SEED_OFFSET)
        # --batch-size is per rank: one step sees batch_size x ranks x grad_accum sequences.
        self.tokens_per_step = B * T * cfg.grad_accum * self.dist.world_size
        self.flops_per_token = flops_per_token(
            self.model_cfg, self.model.num_params(non_embedding=True), T
        )

        if main:
            self.files.remove_stale_temporaries()
        if setup.resume:
            if fsdp:
                moments = read_resume_moments(self.files.resume_state, parameter_names(self.optimizer))
                distributed.load_optimizer_moments(self.loss_fn, self.optimizer, moments)
            else:
                self.progress = load_resume_state(
                    self.files.resume_state, self.model, self.optimizer, scaler=self.scaler
                )
            self.reader.load_state_dict(self.progress.data)
            if main:
                self.files.truncate_after(self.progress.step)
        elif main:
            self.files.truncate_after(-1)  # a fresh run: no records from an earlier attempt
        self.loggers = None
        if main:
            run_config = {"model": self.model_cfg.model_dump(), "train": cfg.model_dump(),
                          "data": str(setup.data_dir), "world_size": self.dist.world_size, "fsdp": fsdp,
                          "loss": {"kind": self.loss_choice.kind, "reason": self.loss_choice.reason}}
            if setup.log:  # first: a backend that cannot start (W&B not logged in) leaves no config behind
                from gpt2cli.train.loggers import Loggers

                resumed_at = self.progress.step if setup.resume else None
                self.loggers = Loggers(setup.log, self.files.root, run_config, resumed_at)
            self.files.write_config(run_config)
        self.last_val_loss: float | None = None
        self.last_eval_step: int | None = None
        # The mismatch alarm looks back over evals, so a resumed run reloads them.
        self.eval_history = [r for r in read_jsonl(self.files.metrics) if "val_loss" in r]

    def _choose_loss(self):
        """--loss resolved for this device, compile flag and micro-batch (memory.choose_loss)."""
        from gpt2cli.memory import choose_loss, total_device_memory

        cfg = self.cfg
        dtype_bytes = torch.empty((), dtype=self.amp_dtype or torch.float32).element_size()
        return choose_loss(
            cfg.loss,
            device_type=self.device.type,
            compiled=cfg.compile,
            batch_size=cfg.batch_size,
            block_size=cfg.block_size,
            padded_vocab=self.model_cfg.padded_vocab_size,
            dtype_bytes=dtype_bytes,
            total_memory=total_device_memory(self.device),
            sharded=self.dist.fsdp,
            activation_checkpointing=cfg.activation_checkpointing,
        )

    # -- data ----------------------------------------------------------------
    def _fixed_batches(self, split: str, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        reader = open_reader(self.setup.data_dir, split, self.cfg.batch_size, self.cfg.block_size, seed)
        return [self._to_device(*reader.next_batch()) for _ in range(self.cfg.eval_batches)]

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.device.type == "cuda":
            # Pinned host memory lets the copy overlap with compute.
            return (
                x.pin_memory().to(self.device, non_blocking=True),
                y.pin_memory().to(self.device, non_blocking=True),
            )
        return x.to(self.device), y.to(self.device)

    def _plain_model(self):
        """The whole model on rank 0 (None on other ranks), for samples and files.

        Under FSDP this gathers the shards (a collective: every rank calls it)
        into a fresh unsharded copy; otherwise it is the model itself.
        """
        from gpt2cli.model import GPT

        if not self.dist.fsdp:
            return self.model if self.dist.is_main else None
        state = distributed.full_model_state(self.loss_fn, self.dist)
        if state is None:
            return None
        # Building a GPT draws init numbers; fork so training's RNG stream is untouched.
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            copy = GPT(self.model_cfg, init=False)  # every weight comes from `state`
        copy.load_state_dict(state)
        return copy.to(self.device).train()

    def _micro_batches(self):
        for _ in range(self.cfg.grad_accum):
            yield self._to_device(*self.reader.next_batch())

    # -- eval ----------------------------------------------------------------
    @torch.no_grad()
    def _mean_loss(self, batches) -> float:
        self.model.eval()
        try:
            total = torch.zeros((), device=self.device)
            for x, y in batches:
                with autocast_context(self.device, self.amp_dtype):
                    total += self.eval_loss_fn(x, y).float()
            return (total / len(batches)).item()
        finally:
            self.model.train()

    def _samples(self) -> list[events.Sample]:
        from gpt2cli.generation import SamplingConfig, complete
        from gpt2cli.tokenizer import get_tokenizer

        if not self.cfg.sample_prompts:
            return []
        # Every prompt at least once; more samples (the prompts cycled, one batch) give the alarm its evidence.
        count = max(len(self.cfg.sample_prompts), self.cfg.eval_samples)
        prompts = [self.cfg.sample_prompts[i % len(self.cfg.sample_prompts)] for i in range(count)]
        model = self._plain_model()
        if model is None:  # not rank 0
            return []
        enc = get_tokenizer()
        # GPT-2's samples used top-k 40 (Radford et al. 2019, §3); a fixed
        # seed makes samples comparable from one eval to the next.
        scfg = SamplingConfig(
            max_new_tokens=self.cfg.sample_tokens, temperature=1.0, top_k=40, seed=self.cfg.seed
        )
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        try:
            done = complete(model, [enc.encode_ordinary(p) for p in prompts], scfg)
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            self.model.train()
        out = []
        for prompt, c in zip(prompts, done, strict=True):
            ents = [e for e in c.entropies if e == e]  # NaN-free
            tokens = c.tokens[:-1] if c.stop_reason == "eot" else c.tokens
            out.append(
                events.Sample(
                    prompt, c.text, sum(ents) / len(ents) if ents else float("nan"), c.stop_reason,
                    tokens=list(tokens), entropies=ents,
                )
            )
        return out

    def evaluate(self, step: int) -> events.Evaluated | None:
        """Eval losses and samples; None on ranks other than 0 (which only join FSDP's collectives)."""
        self.last_eval_step = step
        if not (self.dist.is_main or self.dist.fsdp):
            return None
        t0 = time.monotonic()
        val = self._mean_loss(self.eval_batches)
        train = self._mean_loss(self.eval_train_batches)
        samples = self._samples()
        if not self.dist.is_main:
            return None
        seconds = time.monotonic() - t0
        self.last_val_loss = val
        ents = [s.mean_entropy for s in samples if s.mean_entropy == s.mean_entropy]
        record = {
            "step": step,
            "val_loss": val,
            "train_loss": train,
            "tokens_seen": self.progress.tokens_seen,
            "eval_seconds": round(seconds, 3),
        }
        if ents:
            record["sample_entropy"] = sum(ents) / len(ents)
        mismatch, note, gen = None, None, {}
        if samples:
            # Repetition and entropy of the fixed-prompt samples, tracked against
            # val loss: the loss–generation mismatch the seed saw (issue 7).
            gen = generation_metrics([s.tokens for s in samples], [s.entropies for s in samples])
            record.update({k: v for k, v in gen.items() if v is not None})
            self.eval_history.append(record)
            check = mismatch_check(self.eval_history)
            if check["status"] == "fires":
                mismatch = record["mismatch"] = check["line"]
            elif check["line"]:
                note = record["mismatch_note"] = check["line"]
        self.log_metrics(record)
        sample_records = [
            {"step": step, "prompt": s.prompt, "text": s.text, "mean_entropy": s.mean_entropy,
             "stop_reason": s.stop_reason, "tokens": s.tokens}
            for s in samples
        ]
        self.files.log_samples(sample_records)
        if self.loggers is not None:
            self.loggers.samples(step, sample_records)
        return events.Evaluated(
            step, train, val, samples, seconds, generation=gen, mismatch=mismatch, mismatch_note=note
        )

    def log_metrics(self, record: dict) -> None:
        """metrics.jsonl, and the same record to every --log backend (rank 0 only)."""
        self.files.log_metrics(record)
        if self.loggers is not None:
            self.loggers.metrics(record)

    def close(self) -> None:
        if self.loggers is not None:
            self.loggers.close()
            self.loggers = None

    # -- save ----------------------------------------------------------------
    def save(self, step: int, elapsed: float) -> events.Saved | None:
        """Write the resume state and checkpoint (rank 0; FSDP gathers the shards first). None elsewhere."""
        p = self.progress
        p.step, p.elapsed, p.data = step, elapsed, self.reader.state_dict()
        model = self._plain_model()
        moments = None
        if self.dist.fsdp:
            moments = distributed.full_optimizer_moments(self.loss_fn, self.optimizer, self.dist)
        if not self.dist.is_main:
            return None
        train_json = self.cfg.model_dump_json()
        # Resume state first: it alone is a consistent resume point (state.py).
        save_resume_state(
            self.files.resume_state,
            model,
            self.optimizer,
            p,
            config_json=self.model_cfg.model_dump_json(),
            train_json=train_json,
            scaler=self.scaler,
            moments=moments,
        )
        save_checkpoint(
            model,
            self.files.ckpt,
            step=str(step),
            tokens_seen=str(p.tokens_seen),
            train=train_json,
            data=str(self.setup.data_dir),
            **({"init_from": self.cfg.init_from} if self.cfg.init_from else {}),
        )
        return events.Saved(step, self.files.ckpt)

    # -- the loop ------------------------------------------------------------
    def run(
        self,
        *,
        stop: Callable[[], bool] | None = None,
        time_budget: float | None = None,
    ) -> Iterator[Event]:
        cfg, p = self.cfg, self.progress
        start = p.step
        if start >= cfg.steps:
            raise UserError(
                f"--resume: the run in {self.files.root} already has {start} of its {cfg.steps} steps; "
                "pass a larger --steps to train further"
            )
        started = events.Started(
            run_dir=self.files.root,
            start_step=start,
            total_steps=cfg.steps,
            parameters=self.num_params,
            device=str(self.device),
            dtype=dtype_label(self.amp_dtype, self.scaler is not None),
            tokens_per_step=self.tokens_per_step,
            resumed=self.setup.resume,
            notes=list(self.setup.notes),
            loss=self.loss_choice.describe(),
        )
        if self.dist.is_main:
            yield started
        session_start = time.monotonic()
        elapsed_base = p.elapsed

        def elapsed() -> float:
            return elapsed_base + time.monotonic() - session_start

        def maybe(event):
            return [] if event is None else [event]

        if not self.setup.resume:
            yield from maybe(self.evaluate(0))  # the untrained model: the baseline loss and samples

        # Non-finite bookkeeping lives on the device until a sync point.
        bad_count = torch.zeros((), dtype=torch.int64, device=self.device)
        over_step = torch.full((), -1, dtype=torch.int64, device=self.device)
        last_saved = start

        def check_finite() -> None:
            n = int(bad_count.item())
            if n == 0:
                return
            if p.skipped + n > cfg.skip_nonfinite:
                kept = (
                    f"the last good checkpoint, {self.files.ckpt} (step {last_saved}), is untouched"
                    if self.files.ckpt.exists()
                    else "no checkpoint was saved yet"
                )
                raise NonFiniteError(
                    f"step {int(over_step.item())}: the loss or gradients are not finite "
                    f"({p.skipped + n} such steps, --skip-nonfinite allows {cfg.skip_nonfinite}); "
                    f"stopped without saving: {kept}. Try a lower --lr"
                )

        def commit_skipped() -> None:
            p.skipped += int(bad_count.item())
            bad_count.zero_()

        mark_time, mark_tokens, mark_step = time.monotonic(), 0, start
        reason = "done"
        step = start
        for step in range(start, cfg.steps):
            why = 0
            if stop is not None and stop():
                why = 2
            elif time_budget is not None and time.monotonic() - session_start >= time_budget:
                why = 1
            if self.dist.enabled:  # every rank stops at the same step, or collectives would hang
                why = int(distributed.max_over_ranks(why, self.dist, self.device))
            if why:
                reason = "interrupted" if why == 2 else "time"
                break
            lr = lr_at(step, cfg)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            result = train_step(
                self.loss_fn,
                self.optimizer,
                self._micro_batches(),
                cfg.grad_accum,
                params=self.params,
                device=self.device,
                amp_dtype=self.amp_dtype,
                max_norm=cfg.grad_clip,
                scaler=self.scaler,
                sync_context=self.sync_context,
                agree=self.agree,
            )
            loss, norm, bad = result.loss, result.grad_norm, result.skipped
            bad_count += bad
            over_step = torch.where(
                bad & (over_step < 0) & (bad_count + p.skipped > cfg.skip_nonfinite), step + 1, over_step
            )
            p.tokens_seen += self.tokens_per_step
            mark_tokens += self.tokens_per_step
            s = step + 1
            last = s == cfg.steps

            if s % cfg.log_every == 0 or last:
                # The mean over the global batch; the one sync per interval.
                loss_value = distributed.all_reduce_mean(loss, self.dist).item()
                norm_value = norm.item()
                check_finite()
                now = time.monotonic()
                rate = mark_tokens / max(now - mark_time, 1e-9)
                sec_per_step = (now - mark_time) / max(s - mark_step, 1)
                logged = events.Logged(
                    step=s,
                    loss=loss_value,
                    lr=lr,
                    grad_norm=norm_value,
                    tokens_per_sec=rate,
                    tokens_seen=p.tokens_seen,
                    elapsed=elapsed(),
                    eta=sec_per_step * (cfg.steps - s),
                    mfu=mfu(rate / self.dist.world_size, self.flops_per_token, cfg.peak_tflops),  # per device
                    skipped=p.skipped + int(bad_count.item()),
                )
                record = {
                    "step": s,
                    "loss": loss_value,
                    "lr": lr,
                    "grad_norm": norm_value,
                    "tokens_per_sec": round(rate, 1),
                    "tokens_seen": p.tokens_seen,
                    "elapsed": round(logged.elapsed, 3),
                }
                if logged.mfu is not None:
                    record["mfu"] = logged.mfu
                if logged.skipped:
                    record["skipped_nonfinite"] = logged.skipped
                if self.dist.is_main:
                    self.log_metrics(record)
                    yield logged
                # Another process may have started or ended since: fit the CPU math threads again.
                refit_cpu_threads()
                mark_time, mark_tokens, mark_step = time.monotonic(), 0, s
            if s % cfg.eval_every == 0 or last:
                check_finite()
                yield from maybe(self.evaluate(s))
            if s % cfg.save_every == 0 or last:
                check_finite()
                commit_skipped()
                yield from maybe(self.save(s, elapsed()))
                last_saved = s
            if s % cfg.eval_every == 0 or s % cfg.save_every == 0:
                mark_time, mark_tokens, mark_step = time.monotonic(), 0, s  # rates exclude eval/save time
        else:
            step = cfg.steps

        if reason != "done":
            # Stopped at a step boundary before update `step`: `step` updates are done.
            check_finite()
            commit_skipped()
            if reason == "time" and step > start and step != self.last_eval_step:
                yield from maybe(self.evaluate(step))
            missing = self.dist.is_main and not self.files.ckpt.exists()
            if self.dist.enabled:  # rank 0's view of the file decides for all
                missing = bool(distributed.max_over_ranks(int(missing), self.dist, self.device))
            if step != last_saved or missing:
                yield from maybe(self.save(step, elapsed()))
        if not self.dist.is_main:
            return
        yield events.Finished(step, reason, self.files.ckpt, self.last_val_loss, elapsed())


def train(
    setup: TrainSetup,
    *,
    time_budget: float | None = None,
    handle_signals: bool = True,
    stop: Callable[[], bool] | None = None,
) -> Iterator[Event]:
    """Train the run described by `setup`, yielding progress events.

    handle_signals: while the loop runs, SIGINT/SIGTERM request a clean stop
    (save, then a Finished event with reason "interrupted").
    time_budget: seconds after which to stop early (eval, save, reason "time").
    stop: an extra stop request (a callable polled at every step boundary).
    Under torchrun (distributed.py) every rank calls this; only rank 0 yields events.
    """
    try:
        yield from _train_locked(setup, stop, time_budget, handle_signals)
    except BaseException:
        setup.run_dir.remove_if_empty()  # a run that failed before its first file leaves no empty dir
        raise


def _train_locked(
    setup: TrainSetup, stop: Callable[[], bool] | None, time_budget: float | None, handle_signals: bool
) -> Iterator[Event]:
    with setup.run_dir.lock():  # one writer per run dir (rank 0 holds it for the whole run)
        trainer = Trainer(setup)
        try:
            if not handle_signals:
                yield from trainer.run(stop=stop, time_budget=time_budget)
            else:
                with stop_on_signals() as flag:
                    def requested() -> bool:
                        return flag() or (stop is not None and stop())

                    for event in trainer.run(stop=requested, time_budget=time_budget):
                        if isinstance(event, events.Finished) and event.reason == "interrupted":
                            event.signal = flag.name
                        yield event
            if trainer.dist.enabled:
                import torch.distributed as dist

                dist.barrier()  # rank 0 may still be writing files
        finally:
            trainer.close()
            distributed.shutdown(trainer.dist)
