"""The target model: the one module that touches torch and transformers.

It exposes what speculative verification needs and nothing more: run the tokens of many
sessions through the model in one forward pass on top of their KV caches and return the
logits asked for, and describe the model (vocab, end ids, BOS/EOS rules, chat template, tokenizer
fingerprint: see common/text_tokenizer.py, shared with the edge).

Batching (why this layout). The tokens of all sessions in a step are *packed* into one row
([1, total_tokens]): every linear layer, which is nearly all of the work, sees them as one
matrix, with no padding, so a 256-token prefill chunk and fifteen 1-token decode steps cost
what their 271 tokens cost. Only attention is per session: it reads the session's own keys
and values from a paged KV pool (cloud/blocks.py) through its block table, with its own
positions and causal mask, as vLLM does with varlen attention over paged KV. A padded batch
with a 4D mask (SpecEdge's layout) would pay for the longest row in every row, and ragged
verification blocks plus prefill chunks are the normal case here. Attention per session also
makes a session's result independent of its batch-mates except for how the linear layers
group their sums (the float64 identity tests in tests/test_batching.py).
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from cloud import dtype as dtypes
from cloud import greedy_head
from cloud.blocks import BLOCK_SIZE, KVPool
from cloud.target_engine import Segment, new_kv_pool

from common.model_paths import default_gguf_path, model_cache_root, publish_dir
from common.special_tokens import SpecialTokens, id_list
from common.text_tokenizer import SPEC_FILE, TextTokenizer, TokenizerSpec

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "float16": torch.float16}


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # "auto" picks cuda when available
    # cloud/dtype.py: "auto" is bfloat16 where the hardware runs it natively. The default here is
    # float32, the exact one, for library callers and tests; `tandem cloud` passes its --dtype.
    dtype: str = "float32"
    threads: int = 0  # torch intra-op threads; 0 = the CPUs this process may run on
    # cloud/greedy_head.py: "auto" screens greedy ids through bf16 where the weights are float32 on a
    # CPU with bf16 hardware and the head is large; "screened" always (where the model allows it),
    # "full" never.
    greedy_head: str = "auto"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TargetModel:
    """A causal LM plus tokenizer, ready for cached, block-wise forward passes.

    The transformers target engine (cloud.target_engine.TargetEngine).
    """

    def __init__(self, model, tokenizer, name: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.screened_head: greedy_head.ScreenedHead | None = None  # see use_screened_head
        self.device = next(model.parameters()).device
        config = model.config
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.text = TextTokenizer(tokenizer, id_list(getattr(model.generation_config, "eos_token_id", None)))
        self.eos_token_ids = self.text.end_ids
        self.fingerprint = self.text.fingerprint
        self.chat_template = self.text.chat_template
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        element = torch.finfo(model.dtype).bits // 8
        self.dtype_name = str(model.dtype).removeprefix("torch.")  # "float32", "bfloat16", ...
        self.kv_bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * element

    @classmethod
    def load(cls, path: str | None, options: LoadOptions = LoadOptions()) -> TargetModel:
        """Loads an HF model directory or a GGUF file (None: the default SmolLM2 GGUF)."""
        threads = options.threads or len(os.sched_getaffinity(0))
        torch.set_num_threads(threads)
        device = resolve_device(options.device)
        source = Path(path) if path else default_gguf_path()
        name = source.stem if source.suffix == ".gguf" else source.name
        dtype_name = dtypes.resolve(options.dtype, device.type, name, flags=dtypes.cpu_flags(),
                                    cuda_bf16=device.type == "cuda" and torch.cuda.is_bf16_supported())
        dtype = _DTYPES[dtype_name]
        model_dir = _safetensors_copy(source) if source.suffix == ".gguf" else source
        started = time.monotonic()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
        log.info("loaded target %s (%s, %s, %d torch threads) in %.1fs", name, device, dtype, threads,
                 time.monotonic() - started)
        target = cls(model, tokenizer, name)
        if dtype in (torch.bfloat16, torch.float16) and not target.gives_finite_logits():
            dtypes.refuse_non_finite(options.dtype, dtype_name, name)
        target.use_screened_head(options.greedy_head)
        return target

    def use_screened_head(self, choice: str) -> bool:
        """Takes greedy ids through cloud/greedy_head.py's bf16 screen when `choice` and the model
        allow it (see LoadOptions.greedy_head); True when it does."""
        if choice not in dtypes.GREEDY_HEAD_CHOICES:
            raise ValueError(f"greedy head {choice!r}: choose from {', '.join(dtypes.GREEDY_HEAD_CHOICES)}")
        self.screened_head = None
        head = self.model.get_output_embeddings()
        text = getattr(self.model.config, "get_text_config", lambda: self.model.config)()
        why_not = (
            "the head is not a bias-free float32 linear layer"
            if not (isinstance(head, torch.nn.Linear) and head.bias is None and head.weight.dtype == torch.float32)
            else "the model caps its logits" if getattr(text, "final_logit_softcapping", None) is not None
            else f"the weights are on {self.device.type}" if self.device.type != "cpu"
            else None)
        if choice == "auto" and why_not is None:
            if not dtypes.runs_natively("bfloat16"):
                why_not = "this CPU has no bf16 hardware"
            elif head.weight.numel() < greedy_head.WORTH_SCREENING:
                why_not = "the head is small"
        if choice == "full" or why_not is not None:
            if choice == "screened":
                log.warning("greedy head: not screened for %s: %s", self.name, why_not)
            return False
        screened = greedy_head.ScreenedHead(head.weight.detach())
        if not self._decoder_reproduces_logits(screened):
            log.warning("greedy head: not screened for %s: its logits are not its head's product of the "
                        "decoder's last hidden state", self.name)
            return False
        self.screened_head = screened
        log.info("greedy head: %s's greedy ids screened through bf16 (cloud/greedy_head.py)", self.name)
        return True

    @torch.inference_mode()
    def _decoder_reproduces_logits(self, head: greedy_head.ScreenedHead) -> bool:
        """Whether the model's own logits are exactly head.logits(decoder's last hidden state) on a probe."""
        ids = torch.tensor([self.tokenize("Hello, world. 1 2 3") or [0]], device=self.device)
        stock = self.model(input_ids=ids, use_cache=False).logits[0]
        hidden = self.model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[0]
        return torch.equal(stock, head.logits(hidden))

    def tokenize(self, text: str) -> list[int]:
        """The text's ids alone (nothing added): for tests and prompts assembled from parts."""
        return self.text.tokenize(text)

    def encode(self, text: str) -> list[int]:
        """A raw prompt as the tokenizer encodes it by default (BOS/EOS per its rules)."""
        return self.text.encode(text)

    @property
    def special(self) -> SpecialTokens:
        return self.text.special

    def token_bytes(self, token_id: int) -> bytes:
        """The token's text bytes; special tokens render as nothing, as on the edge (llama.cpp)."""
        return self._token_bytes[token_id]

    @functools.cached_property
    def _token_bytes(self) -> list[bytes]:
        return self.text.token_bytes_table(self.vocab_size)

    def tokenizer_files(self) -> dict[str, bytes]:
        """The tokenizer as the files the edge reads (common/text_tokenizer.py's from_file): the Rust
        pipeline as tokenizer.json, and the spec of what it does not say (as edge/tokenizer_conversion.py
        writes for a draft). The spec carries no fingerprint: cloud/tokenizer_files.py computes it from
        the files themselves and checks it against this model's."""
        tokenizer = self.tokenizer
        template = getattr(tokenizer, "chat_template", None)
        spec = TokenizerSpec(
            bos_token=tokenizer.bos_token, bos_token_id=tokenizer.bos_token_id,
            eos_token=tokenizer.eos_token, eos_token_id=tokenizer.eos_token_id,
            chat_template=template if isinstance(template, str) else None,
            extra_eos_ids=tuple(id_list(getattr(self.model.generation_config, "eos_token_id", None))),
            split_special_tokens=bool(getattr(tokenizer, "split_special_tokens", False)),
        )
        return {"tokenizer.json": tokenizer.backend_tokenizer.to_str().encode(), SPEC_FILE: spec.to_json().encode()}

    def new_kv_storage(self, num_blocks: int, block_size: int) -> PagedKV:
        """Tensors for num_blocks × block_size positions of every layer's keys and values."""
        return PagedKV(self, num_blocks * block_size, block_size)

    def new_kv_pool(self, budget_bytes: int = 64 << 20) -> KVPool:
        """A KV pool of `budget_bytes` for this model alone (warmup, bench/cuda_check.py)."""
        return new_kv_pool(self, budget_bytes)

    @torch.inference_mode()
    def forward_batch(self, pool: KVPool, segments: Sequence[Segment]) -> list[DeviceLogits]:
        """One forward pass over every segment's tokens, each appended to its own KV cache.

        Returns, per segment, the logits of its last `keep` tokens ([keep, vocab] float32; HF's
        greedy search also takes its argmax in float32). On failure every table is as before.
        """
        starts = [segment.table.length for segment in segments]
        try:
            batch = _PackedBatch(pool.storage, segments)
            inputs = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                          attention_mask=_NO_MASK, tandem_batch=batch)
            if self.screened_head is not None:
                hidden = self.model.get_decoder()(**inputs).last_hidden_state[0, batch.keep_rows]
            else:
                out = self.model(**inputs, logits_to_keep=batch.keep_rows)
        except BaseException:
            for segment, start in zip(segments, starts):
                segment.table.truncate(start)
            raise
        sizes = [s.keep for s in segments]
        if self.screened_head is not None:
            return [ScreenedLogits(rows, self.screened_head) for rows in torch.split(hidden, sizes)]
        logits = out.logits[0].float()  # [sum of keep, vocab], still on the model's device
        return [DeviceLogits(rows) for rows in torch.split(logits, sizes)]

    def free_memory_bytes(self) -> int:
        """Memory still free on the model's device (for the default KV-cache budget)."""
        if self.device.type == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0])
        try:
            with open("/proc/meminfo") as meminfo:
                fields = dict(line.split(":", 1) for line in meminfo)
            return int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")

    def gives_finite_logits(self) -> bool:
        """One short pass: False when the logits hold inf or NaN (the dtype's range overflowed)."""
        pool = self.new_kv_pool(BLOCK_SIZE * self.kv_bytes_per_token)
        table = pool.new_table()
        rows = self.forward_batch(pool, [Segment(table, self.tokenize("Hello, world") or [0], 2)])[0].rows
        table.release()
        return bool(torch.isfinite(rows).all())

    def warmup(self) -> None:
        """One tiny forward pass, so the first request does not pay torch's lazy init (~2 s)."""
        pool = self.new_kv_pool(BLOCK_SIZE * self.kv_bytes_per_token)
        table = pool.new_table()
        self.forward_batch(pool, [Segment(table, self.tokenize("Hello") or [0], 1)])[0].argmax()
        table.release()


class DeviceLogits:
    """One segment's logits where the model left them ([rows, vocab] float32 on its device).

    Greedy verification needs only each row's argmax, so only those ids cross to the host (on
    a GPU the device is not left idle while the whole block's logits are copied); sampling
    takes the rows to the host once, where the keyed randomness runs bit-identically in numpy.
    torch.argmax, like numpy's, returns the first of tied maxima.
    """

    def __init__(self, rows: torch.Tensor):
        self.rows = rows
        self._host: np.ndarray | None = None

    def argmax(self) -> list[int]:
        return self.rows.argmax(dim=-1).tolist()

    def numpy(self) -> np.ndarray:
        if self._host is None:
            self._host = self.rows.cpu().numpy()
        return self._host


class ScreenedLogits:
    """One segment's rows as hidden states, for a model whose greedy ids go through a bf16 screen
    (cloud/greedy_head.py): argmax() never makes the full logits; rows and numpy() make them once."""

    def __init__(self, hidden: torch.Tensor, head: greedy_head.ScreenedHead):
        self.hidden = hidden
        self.head = head
        self._rows: torch.Tensor | None = None
        self._host: np.ndarray | None = None

    @property
    def rows(self) -> torch.Tensor:
        if self._rows is None:
            self._rows = self.head.logits(self.hidden)
        return self._rows

    def argmax(self) -> list[int]:
        return self.head.argmax(self.hidden)

    def numpy(self) -> np.ndarray:
        if self._host is None:
            self._host = self.rows.cpu().numpy()
        return self._host

    def first_row(self) -> ScreenedLogits:
        """Row 0 on its own (cloud.target_engine.kept_first_row): a hidden state, not 262k logits,
        unless they were made already. The session keeps rows of one-row passes (a prefill's end),
        whose logits are the same one-row product whenever they are made."""
        row = ScreenedLogits(self.hidden[:1].clone(), self.head)
        if self._rows is not None:
            row._rows = self._rows[:1].clone()
        return row


class PagedKV:
    """Keys and values of every session, in blocks: per layer a [kv_heads, slots, head_dim] tensor.

    Allocated once, never grown (cloud/blocks.py sizes it from the KV budget). torch.empty: on a
    CPU the pages are only taken as tokens are written; on a GPU the memory is held from the start.
    Nothing reads a slot before a token wrote it.
    """

    def __init__(self, target: TargetModel, slots: int, block_size: int):
        config = target.model.config
        text = getattr(config, "get_text_config", lambda: config)()
        self.head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        self.kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        self.layers = text.num_hidden_layers
        self.dtype, self.device = target.model.dtype, target.device
        self.block_size = block_size
        self.keys: list[torch.Tensor] = [self._empty(slots) for _ in range(self.layers)]
        self.values: list[torch.Tensor] = [self._empty(slots) for _ in range(self.layers)]
        _use_paged_attention(target.model)

    def _empty(self, slots: int) -> torch.Tensor:
        with torch.inference_mode():
            return torch.empty(self.kv_heads, slots, self.head_dim, dtype=self.dtype, device=self.device)

    def copy_blocks(self, copies: Sequence[tuple[int, int]]) -> None:
        size = self.block_size
        for old, new in copies:
            for pool in (*self.keys, *self.values):
                pool[:, new * size : (new + 1) * size] = pool[:, old * size : (old + 1) * size]


_NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)  # a 4D mask makes transformers skip building one


class _PackedBatch:
    """A step's tokens packed into one row, with where each session reads and writes its KV."""

    def __init__(self, pool: PagedKV, segments: Sequence[Segment]):
        self.pool = pool
        device = pool.device
        ids, positions, writes, keep = [], [], [], []
        self.spans: list[tuple[int, int, torch.Tensor, int]] = []  # (start, end, read slots, first position)
        offset = 0
        for segment in segments:
            table, n = segment.table, len(segment.token_ids)
            start = table.length
            pool.copy_blocks(table.extend(n))
            ids.extend(segment.token_ids)
            positions.append(np.arange(start, start + n))
            writes.append(table.slots(start, start + n))
            keep.extend(range(offset + n - segment.keep, offset + n))
            self.spans.append((offset, offset + n, torch.from_numpy(table.slots(0, start + n)).to(device), start))
            offset += n
        self.input_ids = torch.tensor([ids], dtype=torch.long, device=device)
        self.position_ids = torch.from_numpy(np.concatenate(positions))[None].to(device)
        self.write_slots = torch.from_numpy(np.concatenate(writes)).to(device)
        self.keep_rows = torch.tensor(keep, dtype=torch.long, device=device)
        self._masks: dict[tuple[int, int | None], torch.Tensor | None] = {}

    def mask(self, index: int, window: int | None) -> torch.Tensor | None:
        """[n, kv_len] bool, True where a query may attend: causal, within a sliding window if any."""
        key = (index, window)
        if key not in self._masks:
            start, end, read, first = self.spans[index]
            n, kv_len = end - start, len(read)
            if n == 1 and (window is None or kv_len <= window):
                self._masks[key] = None
            else:
                q = torch.arange(first, first + n, device=read.device)[:, None]
                k = torch.arange(kv_len, device=read.device)[None, :]
                allowed = k <= q
                if window is not None:
                    allowed &= k > q - window
                self._masks[key] = allowed
        return self._masks[key]


def _paged_attention(fallback):
    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        """query [1, heads, T, dim]; key, value [1, kv_heads, T, dim] of this step's tokens."""
        batch: _PackedBatch | None = kwargs.pop("tandem_batch", None)
        if batch is None:  # a plain call (e.g. the tests' reference generate): the model's own attention
            return fallback(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        keys, values = batch.pool.keys[module.layer_idx], batch.pool.values[module.layer_idx]
        keys.index_copy_(1, batch.write_slots, key[0])
        values.index_copy_(1, batch.write_slots, value[0])
        window = kwargs.get("sliding_window")
        outputs = []
        for index, (start, end, read, _) in enumerate(batch.spans):
            outputs.append(torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start:end], keys.index_select(1, read)[None], values.index_select(1, read)[None],
                attn_mask=batch.mask(index, window), scale=scaling, enable_gqa=True))
        return torch.cat(outputs, dim=2).transpose(1, 2), None  # [1, T, heads, dim]

    return attention


def _use_paged_attention(model) -> None:
    """Routes the model's attention through _paged_attention (plain calls still get the original)."""
    original = model.config._attn_implementation
    if original.startswith("tandem_paged"):
        return
    name = f"tandem_paged_{original}"
    fallback = ALL_ATTENTION_FUNCTIONS[original] if original != "eager" else _eager_attention(model)
    ALL_ATTENTION_FUNCTIONS.register(name, _paged_attention(fallback))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[original])
    model.set_attn_implementation(name)


def _eager_attention(model):
    import importlib

    return importlib.import_module(type(model).__module__).eager_attention_forward


def _safetensors_copy(gguf: Path) -> Path:
    """A transformers copy of a GGUF model, made once and cached.

    Loading a GGUF in transformers dequantizes it (~15 s for 135M params); the safetensors
    copy then loads in well under a second.
    """
    target = model_cache_root() / "targets" / f"{gguf.stem}-{gguf.stat().st_size}"
    if (target / "config.json").exists():
        return target
    log.info("first start: converting %s for transformers (one-time, ~15-60 s)...", gguf.name)
    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained while it still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    publish_dir(target, write)
    log.info("cached %s in %.1fs", target, time.monotonic() - started)
    return target
