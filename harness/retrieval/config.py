"""Structured configs of the retrieval experiments: `task`, `model`, `train`, `eval` and the training-free `probe`.

Each dataclass backs one config group under conf/ (task/, model/, train/; eval and probe live in the experiment
presets), so a misspelt key fails at composition. `validate()` checks the values against each other and raises
`RetrievalConfigError` naming the value and what is allowed, before any tensor is made:

    cfg = RetrievalConfig(task=TaskConfig(name="passkey", seq_len=64, key_len=40))
    cfg.validate()   # RetrievalConfigError: task.key_len=40 does not fit task.seq_len=64 ...
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, List, Optional

TASKS = ("mqar", "passkey")
MQAR_LAYOUTS = ("zoology", "interleaved")
GAP_DISTRIBUTIONS = ("uniform", "log_uniform")
DTYPES = ("float32", "float64", "float16", "bfloat16")

# Token ids shared by both tasks: three specials, then the key, value and filler vocabularies (tasks.py).
NUM_SPECIAL_TOKENS = 3


class RetrievalConfigError(ValueError):
    """A retrieval config that cannot work, found before training starts."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise RetrievalConfigError(message)


# The bounds every config value shares (the runner's checks import them): a count above MAX_COUNT (heads, a length,
# repeats, a seed) is a typo and past what torch's shape, thread and seed arguments take; a time budget beyond a
# week is a typo and past what the worker's pipe poll and the timers accept.
MAX_COUNT = 2**31 - 1
MAX_SECONDS = 7 * 24 * 3600.0


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and minimum <= value <= MAX_COUNT,
             f"{name}={value!r} must be an int in [{minimum}, {MAX_COUNT}]")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class TaskConfig:
    """A synthetic retrieval task, generated on the fly from the seed.

    mqar, layout="zoology" (HazyResearch/zoology's multiquery_ar): all `num_pairs` key-value pairs first (k v k v
    ...), keys and values drawn without repetition from their own vocabularies, then every key queried once at an
    even offset after the pairs; the query slots are drawn without replacement with probability proportional to
    i^(power_a - 1) (slot i = 1, 2, ...: a power law, most queries soon after the pairs); the other positions are
    random tokens of the key and value vocabularies (`random_non_queries`) or FILL.
    mqar, layout="interleaved" (this project's first layout): pairs scattered over filler, `num_queries` of the keys
    appear again later, the gap (query position minus key position) drawn from [min_gap, max_gap], uniformly or
    log-uniformly (`gap_distribution`: as many gaps in [2, 4) as in [512, 1024), so a short-range pattern at a
    long N still meets queries it can reach), values drawn with replacement.
    passkey: random filler tokens, a marker followed by a `key_len`-token key at relative depth d in [0, 1] of the
    context (0 = first token, 1 = just before the question), then a question marker after which the model must
    produce the key (scored as exact match of all key tokens).
    """

    name: str = "mqar"  # mqar | passkey
    seq_len: int = 128  # training sequence length (passkey: context length, question and answer included)
    num_keys: int = 32  # key vocabulary (passkey: the key-token vocabulary)
    num_values: int = 32  # value vocabulary (mqar; chance = 1 / num_values)
    # mqar
    layout: str = "zoology"  # zoology | interleaved
    num_pairs: int = 8
    power_a: float = 0.01  # zoology: query slot i drawn with weight i^(power_a - 1); 1.0 = uniform
    random_non_queries: bool = True  # zoology: positions outside pairs and queries hold random key/value tokens
    num_queries: Optional[int] = None  # interleaved: None queries every pair (zoology always queries every pair)
    min_gap: int = 2  # interleaved: the query can come no earlier than right after the value
    max_gap: Optional[int] = None  # interleaved: None = as far as the sequence allows (seq_len - 1)
    gap_distribution: str = "uniform"  # interleaved: uniform | log_uniform over [min_gap, max_gap]
    # passkey
    key_len: int = 4
    filler_vocab: int = 32

    def vocab_size(self) -> int:
        return NUM_SPECIAL_TOKENS + self.num_keys + self.num_values + self.filler_vocab

    def queries(self) -> int:
        return self.num_pairs if self.num_queries is None else self.num_queries

    def gap_range(self, seq_len: int) -> tuple[int, int]:
        """[min_gap, max_gap] used at `seq_len` (max_gap=None: the largest that fits)."""
        longest = seq_len - 1
        return self.min_gap, longest if self.max_gap is None else min(self.max_gap, longest)

    def validate(self, seq_len: Optional[int] = None, where: str = "task.seq_len") -> None:
        """Check the task on its own, or at another length (`seq_len`, named `where` in messages)."""
        _require(self.name in TASKS, f"task.name={self.name!r} is not known; choose one of {list(TASKS)}")
        n = self.seq_len if seq_len is None else seq_len
        _positive_int(where, n, 2)
        _positive_int("task.num_keys", self.num_keys)
        _positive_int("task.num_values", self.num_values)
        _positive_int("task.filler_vocab", self.filler_vocab)
        if self.name == "mqar":
            _require(self.layout in MQAR_LAYOUTS,
                     f"task.layout={self.layout!r} is not known; choose one of {list(MQAR_LAYOUTS)}")
            _positive_int("task.num_pairs", self.num_pairs)
            _require(self.num_pairs <= self.num_keys,
                     f"task.num_pairs={self.num_pairs} exceeds task.num_keys={self.num_keys}: keys in one "
                     f"sequence are distinct, so at most num_keys pairs")
            q = self.queries()
            _positive_int("task.num_queries", q)
            _require(q <= self.num_pairs, f"task.num_queries={q} exceeds task.num_pairs={self.num_pairs} "
                                          f"(each pair is queried at most once)")
            # Checked in either layout: a bad value should not wait for the day the layout is switched.
            _require(isinstance(self.power_a, (int, float)) and not isinstance(self.power_a, bool)
                     and math.isfinite(self.power_a) and self.power_a > 0,
                     f"task.power_a={self.power_a!r} must be a number > 0 (zoology's gap power law; 1 = uniform)")
            _require(self.gap_distribution in GAP_DISTRIBUTIONS,
                     f"task.gap_distribution={self.gap_distribution!r} is not known; choose one of "
                     f"{list(GAP_DISTRIBUTIONS)}")
            if self.layout == "zoology":
                self._validate_zoology(n, where)
            else:
                self._validate_interleaved(n, where, q)
        else:
            _positive_int("task.key_len", self.key_len)
            _require(2 * self.key_len + 1 <= n,
                     f"task.key_len={self.key_len} is too long for {where}={n}: the context holds the marked "
                     f"key ({self.key_len + 1} tokens) and the question with its answer ({self.key_len} tokens), "
                     f"so key_len <= {(n - 1) // 2}")

    def _validate_zoology(self, n: int, where: str) -> None:
        _require(self.num_queries is None or self.num_queries == self.num_pairs,
                 f"task.num_queries={self.num_queries}: the zoology layout queries every pair; set it to null "
                 f"(or use task.layout=interleaved)")
        _require(self.num_pairs <= self.num_values,
                 f"task.num_pairs={self.num_pairs} exceeds task.num_values={self.num_values}: the zoology layout "
                 f"repeats no value within a sequence, so at most num_values pairs")
        # zoology's own bound: the pairs, then at least one query slot (two positions) per pair.
        _require(4 * self.num_pairs <= n,
                 f"task.num_pairs={self.num_pairs} pairs need {4 * self.num_pairs} positions in the zoology layout "
                 f"(2 per pair, then 2 per query slot), more than {where}={n}; at most {n // 4} pairs fit")

    def _validate_interleaved(self, n: int, where: str, q: int) -> None:
        # Pairs and queries are placed at random free positions; keeping them to half the sequence leaves
        # room to place every one at its drawn gap.
        _require(2 * self.num_pairs + q <= n // 2,
                 f"task.num_pairs={self.num_pairs} pairs (2 tokens each) and {q} queries need "
                 f"{2 * self.num_pairs + q} positions, more than fit in {where}={n} (at most half of it, "
                 f"{n // 2}, may hold pairs and queries)")
        _positive_int("task.min_gap", self.min_gap, 2)
        if self.max_gap is not None:
            _require(self.max_gap >= self.min_gap,
                     f"task.max_gap={self.max_gap} must be >= task.min_gap={self.min_gap}")
        _require(self.min_gap <= n - 1,
                 f"task.min_gap={self.min_gap} does not fit {where}={n} (largest gap: {n - 1})")


@dataclass
class ModelConfig:
    """A nanoGPT-style decoder: pre-norm blocks of attention (rotary q/k) and a GELU MLP."""

    layers: int = 2
    d_model: int = 64
    heads: int = 4
    mlp_ratio: int = 4  # 0: attention-only blocks
    rotary_base: float = 10000.0
    token_shift: bool = False  # mix each position with its predecessor before attention (model.TokenShift)

    def validate(self) -> None:
        _positive_int("model.layers", self.layers)
        _positive_int("model.heads", self.heads)
        _positive_int("model.d_model", self.d_model)
        _positive_int("model.mlp_ratio", self.mlp_ratio, 0)
        _require(self.d_model % self.heads == 0,
                 f"model.d_model={self.d_model} must be a multiple of model.heads={self.heads}")
        _require((self.d_model // self.heads) % 2 == 0,
                 f"model.d_model / model.heads = {self.d_model // self.heads} must be even (rotary rotates pairs)")
        _require(_finite(self.rotary_base) and self.rotary_base > 1,
                 f"model.rotary_base={self.rotary_base} must be a finite number > 1")


@dataclass
class TrainConfig:
    """AdamW on a budget of steps (batch_size sequences each), stopped early when the model has learnt what its
    pattern allows, swept over learning rates and repeated over seeds.

    Every stopping rule but the time cap is deterministic (steps and validation accuracy), so one seed gives the
    same model on any machine:
      ceiling   validation accuracy >= the pattern's ceiling (its reachable share of the validation items plus
                chance on the rest) minus `ceiling_margin`;
      plateau   after `plateau_min_steps`, and once validation accuracy has come `plateau_min_progress` of the
                way from chance to the ceiling, the best of the last `plateau_patience` checks is no more than
                `plateau_min_delta` above the best before them;
      max_steps the budget ran out first: the run had not converged, and the report says so;
      time_cap  `max_seconds` of wall clock: a safety cap only; the row is marked and the report calls it out.
    lrs: each rate is trained at the first seed and the one with the best validation accuracy is kept (zoology
    reports the best of a sweep); `seeds` runs (train.seed, train.seed + 1, ...) at that rate give the mean and
    its 95 % interval.
    """

    max_steps: int = 1500
    max_seconds: float = 1800.0  # safety cap; a run it stops is marked train_stop=time_cap
    batch_size: int = 64
    lrs: List[float] = field(default_factory=lambda: [3e-3])
    seeds: int = 1  # runs at the chosen rate, seeds train.seed .. train.seed + seeds - 1
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at max_steps
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100  # steps between validation passes (which also check the stopping rules)
    val_sequences: int = 256
    ceiling_margin: float = 0.01
    plateau_patience: int = 4  # validation checks
    plateau_min_delta: float = 0.005
    plateau_min_steps: int = 300  # MQAR often sits at chance before it learns: no plateau stop before this
    plateau_min_progress: float = 0.25  # nor before validation accuracy is this far from chance to the ceiling
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    threads: Optional[int] = None  # torch.set_num_threads during the run; None keeps the current setting
    progress: bool = True

    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    def validate(self) -> None:
        _positive_int("train.max_steps", self.max_steps)
        _positive_int("train.batch_size", self.batch_size)
        _positive_int("train.eval_every", self.eval_every)
        _positive_int("train.val_sequences", self.val_sequences)
        _positive_int("train.warmup_steps", self.warmup_steps, 0)
        _positive_int("train.seed", self.seed, 0)
        _positive_int("train.seeds", self.seeds)
        _require(_finite(self.max_seconds) and 0 < self.max_seconds <= MAX_SECONDS,
                 f"train.max_seconds={self.max_seconds} must be a finite number of seconds in (0, {MAX_SECONDS:g}] "
                 f"(a week)")
        _require(isinstance(self.lrs, (list, tuple)) and len(self.lrs) > 0,
                 f"train.lrs={self.lrs!r} must list at least one learning rate, e.g. [1e-3, 3e-3, 1e-2]")
        for i, lr in enumerate(self.lrs):
            _require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0 and math.isfinite(lr),
                     f"train.lrs[{i}]={lr!r} must be a positive number")
        _require(len(set(self.lrs)) == len(self.lrs), f"train.lrs={list(self.lrs)} repeats a rate")
        _require(_finite(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, f"train.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        _require(_finite(self.weight_decay) and self.weight_decay >= 0,
                 f"train.weight_decay={self.weight_decay} must be a finite number >= 0")
        _require(_finite(self.grad_clip) and self.grad_clip > 0,
                 f"train.grad_clip={self.grad_clip} must be a finite number > 0")
        _require(_finite(self.ceiling_margin) and 0 <= self.ceiling_margin < 1, f"train.ceiling_margin={self.ceiling_margin} must be in [0, 1)")
        _positive_int("train.plateau_patience", self.plateau_patience)
        _require(_finite(self.plateau_min_delta) and self.plateau_min_delta >= 0, f"train.plateau_min_delta={self.plateau_min_delta} must be >= 0")
        _positive_int("train.plateau_min_steps", self.plateau_min_steps, 0)
        _require(_finite(self.plateau_min_progress) and 0 <= self.plateau_min_progress < 1,
                 f"train.plateau_min_progress={self.plateau_min_progress} must be in [0, 1)")
        _require(self.dtype in DTYPES, f"train.dtype={self.dtype!r} is not one of {list(DTYPES)}")
        _require(self.device == "cpu" or self.device.startswith("cuda"),
                 f"train.device={self.device!r} must be 'cpu' or 'cuda[:i]'")
        if self.threads is not None:
            _positive_int("train.threads", self.threads)


@dataclass
class EvalConfig:
    """Held-out evaluation (sequences drawn from a seed stream the training never sees)."""

    seq_lens: List[int] = field(default_factory=list)  # mqar lengths / passkey context lengths; [] = task.seq_len
    depths: List[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # passkey only
    sequences: int = 256  # per mqar length; per (context length, depth) for passkey
    batch_size: int = 64
    # Lower edges of the distance buckets (the last bucket runs to the longest distance); [] = 1, 2, 4, 8, ...
    bucket_edges: List[int] = field(default_factory=list)
    # Noise (mqar, interleaved layout): every query at distance noise_distance, in sequences of the training
    # length holding each of these numbers of pairs (the others are distractors); [] = no noise sets.
    noise_pairs: List[int] = field(default_factory=list)
    noise_distance: int = 6

    def noise_task(self, task: TaskConfig, pairs: int) -> TaskConfig:
        """The task of one noise set: `pairs` pairs, each queried at exactly noise_distance."""
        from dataclasses import replace

        return replace(task, num_pairs=pairs, num_queries=None, min_gap=self.noise_distance,
                       max_gap=self.noise_distance)

    def lengths(self, task: TaskConfig) -> list[int]:
        return list(self.seq_lens) if self.seq_lens else [task.seq_len]

    def validate(self, task: TaskConfig) -> None:
        _positive_int("eval.sequences", self.sequences)
        _positive_int("eval.batch_size", self.batch_size)
        for i, n in enumerate(self.lengths(task)):
            task.validate(n, where=f"eval.seq_lens[{i}]")
        if task.name == "passkey":
            _require(len(self.depths) > 0, "eval.depths=[] is empty; passkey needs at least one depth in [0, 1]")
            for i, depth in enumerate(self.depths):
                _require(isinstance(depth, (int, float)) and 0.0 <= depth <= 1.0,
                         f"eval.depths[{i}]={depth!r} is outside [0, 1] (0 = start of the context, 1 = just "
                         f"before the question)")
        edges = list(self.bucket_edges)
        for i, edge in enumerate(edges):
            _positive_int(f"eval.bucket_edges[{i}]", edge, 0)
        _require(edges == sorted(set(edges)), f"eval.bucket_edges={edges} must be strictly increasing")
        if self.noise_pairs:
            _require(task.name == "mqar" and task.layout == "interleaved",
                     f"eval.noise_pairs={list(self.noise_pairs)} needs task.name=mqar with task.layout=interleaved "
                     f"(the zoology layout draws its gaps, so no fixed distance), got task.name={task.name!r}, "
                     f"task.layout={task.layout!r}")
            _positive_int("eval.noise_distance", self.noise_distance, 2)
            for i, pairs in enumerate(self.noise_pairs):
                _positive_int(f"eval.noise_pairs[{i}]", pairs)
                try:
                    self.noise_task(task, pairs).validate(where="task.seq_len")
                except RetrievalConfigError as error:
                    raise RetrievalConfigError(f"eval.noise_pairs[{i}]={pairs}: {error}") from None


@dataclass
class RetrievalConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        self.task.validate()
        self.model.validate()
        self.train.validate()
        self.eval.validate(self.task)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, mapping: Any) -> "RetrievalConfig":
        """From a plain dict or an OmegaConf node with task/model/train/eval sections (missing ones default).

        Unknown keys raise, naming the section and the allowed keys, so a typo never falls back to a default.
        """
        mapping = _plain(mapping)
        sections = {"task": TaskConfig, "model": ModelConfig, "train": TrainConfig, "eval": EvalConfig}
        unknown = sorted(set(mapping) - set(sections))
        _require(not unknown, f"unknown retrieval config sections {unknown}; allowed: {sorted(sections)}")
        return cls(**{name: _section(name, kind, mapping.get(name) or {}) for name, kind in sections.items()})


@dataclass
class ProbeConfig:
    """The training-free probe of one attention layer (probe.py explains the construction)."""

    seq_len: int = 256
    heads: int = 4
    head_dim: int = 64  # also the number of distinct key codes per block
    causal: bool = True
    dtype: str = "float32"
    device: str = "cpu"
    margin: float = 20.0  # the matching key's score; every other key scores 0, so e^margin must dwarf seq_len
    chunk: int = 32  # probe sequences per attention call
    bucket_edges: List[int] = field(default_factory=list)  # as EvalConfig.bucket_edges; [] = powers of two

    def validate(self) -> None:
        _positive_int("probe.seq_len", self.seq_len, 2)
        _positive_int("probe.heads", self.heads)
        _positive_int("probe.head_dim", self.head_dim)
        _positive_int("probe.chunk", self.chunk)
        _require(self.dtype in DTYPES, f"probe.dtype={self.dtype!r} is not one of {list(DTYPES)}")
        _require(self.device == "cpu" or self.device.startswith("cuda"),
                 f"probe.device={self.device!r} must be 'cpu' or 'cuda[:i]'")
        # The target's softmax weight is at least e^m / (e^m + seq_len); it must stay well above 1/2.
        _require(_finite(self.margin) and self.margin >= math.log(self.seq_len) + 4,
                 f"probe.margin={self.margin} is too small for probe.seq_len={self.seq_len}: the matching key "
                 f"must outweigh every other key, so margin >= ln(seq_len) + 4 = {math.log(self.seq_len) + 4:.1f}")
        _require(self.margin <= 60, f"probe.margin={self.margin} must be <= 60 (exp overflows in half precision "
                                    f"kernels that do not subtract the max)")
        edges = list(self.bucket_edges)
        _require(edges == sorted(set(edges)), f"probe.bucket_edges={edges} must be strictly increasing")

    @classmethod
    def from_mapping(cls, mapping: Any) -> "ProbeConfig":
        return _section("probe", cls, _plain(mapping or {}))


def _plain(mapping: Any) -> dict[str, Any]:
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency; plain dicts still work without it
        DictConfig = ()
    if isinstance(mapping, DictConfig):
        return OmegaConf.to_container(mapping, resolve=True)
    if hasattr(mapping, "__dataclass_fields__"):
        return asdict(mapping)
    _require(isinstance(mapping, dict), f"expected a mapping, got {type(mapping).__name__}")
    return dict(mapping)


def _section(name: str, kind: type, values: Any) -> Any:
    if isinstance(values, kind):
        return values
    values = _plain(values)
    allowed = set(kind.__dataclass_fields__)
    unknown = sorted(set(values) - allowed)
    if unknown:
        import difflib

        hints = [f"{key!r}" + (f" (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
            key, sorted(allowed), n=1)) else "") for key in unknown]
        raise RetrievalConfigError(f"unknown {name} keys: {', '.join(hints)}; allowed: {sorted(allowed)}")
    return kind(**values)
