"""Causal grouped-query self-attention with q/k RMS norm, rotary and a per-head query gain.

Baseline per SPEC 2.4; record-stack options (all off by default, off = the baseline bit for bit):
partial RoPE and its NTK rescale (``ROPE_DIMS``, ``ROPE_TRAIN_SEQ_LEN``, SPEC 4.4.2), exclusive
self-attention on the last layers (``XSA_LAST_N``, SPEC 4.4.3, ``features/xsa.py``), a per-head
output gate (``ATTN_OUT_GATE``, SPEC 5.5, ``features/attn_gate.py``) and document isolation
(``DOC_ISOLATED_ATTENTION``, SPEC 5.2, ``features/doc_isolation.py``).

The attention kernel is chosen by ``ATTENTION_BACKEND`` (every kernel computes the same maths):

* ``auto``: FlashAttention 3 when ``flash_attn_interface`` imports and the tensors are on a Hopper GPU
  (compute capability 9.x), else PyTorch SDPA;
* ``fa3``: FlashAttention 3 (``flash_attn_func``, or ``flash_attn_varlen_func`` with document isolation);
* ``sdpa``: ``F.scaled_dot_product_attention``, which picks its own kernel; GQA through ``enable_gqa``,
  so K/V heads are never copied;
* ``sdpa_flash`` / ``sdpa_efficient`` / ``sdpa_math``: SDPA forced to one kernel with ``sdpa_kernel``
  (the memory-efficient kernel has no GQA support, so K/V heads are repeated for it);
* ``eager``: the plain matmul-softmax reference, on any device.
"""

import math
from contextlib import nullcontext
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from pgolf.config import ModelConfig, config_field_choices
from pgolf.errors import ConfigError
from pgolf.model.features.attn_gate import build_attention_output_gate
from pgolf.model.features.doc_isolation import document_causal_mask, varlen_cu_seqlens
from pgolf.model.features.xsa import ExclusiveSelfAttention
from pgolf.model.layers import CastedLinear, Rotary, apply_rotary

# ATTENTION_BACKEND values that run PyTorch SDPA, and the SDPA kernel each forces (None = SDPA's choice).
SDPA_BACKENDS = {
    "sdpa": None,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa_math": SDPBackend.MATH,
}
# The ATTENTION_BACKEND values that force one SDPA kernel ("sdpa" lets SDPA choose).
FORCED_SDPA_BACKENDS = ("sdpa_flash", "sdpa_efficient", "sdpa_math")
# Every ATTENTION_BACKEND name, as the config declares them: SDPA_BACKENDS, "auto", "fa3" and "eager".
ATTENTION_BACKENDS = config_field_choices()["attention_backend"]
FA3_MODULE = "flash_attn_interface"
FA3_INSTALL_HINT = ("install FlashAttention 3 (pip package flash-attn-3, prebuilt wheels: pip install flash-attn-3 "
                    "--find-links https://download.pytorch.org/whl/flash-attn-3/ ; or build the hopper/ folder of "
                    "github.com/Dao-AILab/flash-attention), or set ATTENTION_BACKEND=auto")


def load_flash_attn_3():
    """The ``flash_attn_interface`` module of FlashAttention 3, or None when it is not installed."""
    try:
        import flash_attn_interface
    except ImportError:
        return None
    return flash_attn_interface


class FlashAttention3(NamedTuple):
    """FA3's two entry points. Models keep these rather than the module, which cannot be deep-copied."""

    flash_attn_func: Callable
    flash_attn_varlen_func: Callable


def flash_attention_3_entry_points() -> FlashAttention3 | None:
    """FA3's functions when ``flash_attn_interface`` is installed, else None."""
    module = load_flash_attn_3()
    if module is None:
        return None
    return FlashAttention3(module.flash_attn_func, module.flash_attn_varlen_func)


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) compute capability of a CUDA ``device``; None for any other device."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def hopper_gpu_present() -> bool:
    """True when the current CUDA device is a Hopper (compute capability 9.x)."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def choose_attention_kernel(requested: str, *, on_cuda: bool, fa3_ready: bool) -> str:
    """The kernel ``requested`` runs: ``auto`` becomes "fa3" (``fa3_ready`` on CUDA) or "sdpa".

    ``fa3_ready``: FlashAttention 3 is importable and, for ``auto``, the GPU is a Hopper. Raises
    ConfigError when a forced backend cannot run here (an unknown name is validate_config's to report).
    """
    if requested == "auto":
        return "fa3" if on_cuda and fa3_ready else "sdpa"
    if requested == "fa3" and not (on_cuda and fa3_ready):
        why = "runs only on a CUDA GPU" if not on_cuda else f"needs the module {FA3_MODULE}, which is not installed"
        raise ConfigError(f"ATTENTION_BACKEND=fa3 {why}: {FA3_INSTALL_HINT}.")
    if requested == "sdpa_efficient" and not on_cuda:
        raise ConfigError("ATTENTION_BACKEND=sdpa_efficient runs only on a CUDA GPU (PyTorch has no memory-efficient "
                          "SDPA kernel on CPU); use sdpa, sdpa_math or eager here.")
    # Checked here, after the "auto" return: an export for "auto" then needs no list of the names.
    assert requested in ATTENTION_BACKENDS, requested
    return requested


def resolve_attention_backend(requested: str, device: torch.device) -> str:
    """The concrete kernel ``requested`` resolves to on ``device`` (for logs and tests)."""
    capability = cuda_capability(device)
    if requested == "sdpa_flash" and capability is not None and capability < (8, 0):
        raise ConfigError(f"ATTENTION_BACKEND=sdpa_flash needs compute capability 8.0 or newer; this GPU has "
                          f"{capability[0]}.{capability[1]}. Use sdpa_efficient, sdpa or auto.")
    importable = requested in ("auto", "fa3") and load_flash_attn_3() is not None
    hopper = capability is not None and capability[0] == 9
    fa3_ready = importable and (hopper or requested == "fa3")
    return choose_attention_kernel(requested, on_cuda=device.type == "cuda", fa3_ready=fa3_ready)


def describe_attention_backend(cfg: ModelConfig, device: torch.device) -> str:
    """One line for the run header: the kernel attention runs on ``device`` and why."""
    kernel = resolve_attention_backend(cfg.attention_backend, device)
    if cfg.attention_backend != "auto":
        reason = "forced"
    elif kernel == "fa3":
        reason = "auto: FlashAttention 3 on a Hopper GPU"
    elif device.type != "cuda":
        reason = f"auto: {device.type} device"
    elif cuda_capability(device)[0] != 9:
        reason = "auto: FlashAttention 3 needs a Hopper GPU"
    else:
        reason = f"auto: {FA3_MODULE} not installed; pip install flash-attn-3 for FA3"
    isolation = ""
    if cfg.doc_isolated_attention:
        isolation = " doc_isolated:" + ("varlen" if kernel == "fa3" else "block_diagonal_mask")
    return f"attention_backend:{kernel} ({reason}){isolation}"


def repeat_kv_heads(t_BKTD: torch.Tensor, num_heads: int) -> torch.Tensor:
    """K or V with each of its heads repeated for the query heads that share it (query head h reads
    KV head h // (H / Hkv)); a copy, for kernels without grouped-query support."""
    group = num_heads // t_BKTD.size(1)
    return t_BKTD if group == 1 else t_BKTD.repeat_interleave(group, dim=1)


def sdpa_attention(q_BHTD: torch.Tensor, k_BKTD: torch.Tensor, v_BKTD: torch.Tensor,
                   segments_BT: torch.Tensor | None, kernel: SDPBackend | None) -> torch.Tensor:
    """PyTorch SDPA, optionally forced to one kernel. Without segments this is the baseline's call."""
    num_heads = q_BHTD.size(1)
    mask = None if segments_BT is None else document_causal_mask(segments_BT)
    # The memory-efficient kernel has no GQA; with a mask, enable_gqa would also push CUDA onto the
    # math kernel. Repeating K/V heads keeps both on a fused kernel. (`kernel is not None` first: an
    # export where SDPA chooses its kernel then folds the test and ships no repeat.)
    if (kernel is not None and kernel == SDPBackend.EFFICIENT_ATTENTION) or (mask is not None and q_BHTD.is_cuda):
        k_BKTD, v_BKTD = repeat_kv_heads(k_BKTD, num_heads), repeat_kv_heads(v_BKTD, num_heads)
    with nullcontext() if kernel is None else sdpa_kernel(kernel):
        return F.scaled_dot_product_attention(q_BHTD, k_BKTD, v_BKTD, attn_mask=mask, is_causal=mask is None,
                                              enable_gqa=k_BKTD.size(1) != num_heads)


def eager_attention(q_BHTD: torch.Tensor, k_BKTD: torch.Tensor, v_BKTD: torch.Tensor,
                    segments_BT: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + causal/document mask) v, written out; the softmax runs in fp32."""
    num_heads, T = q_BHTD.size(1), q_BHTD.size(2)
    k_BHTD, v_BHTD = repeat_kv_heads(k_BKTD, num_heads), repeat_kv_heads(v_BKTD, num_heads)
    scores_BHTT = (q_BHTD @ k_BHTD.transpose(-1, -2)) * (1.0 / math.sqrt(q_BHTD.size(-1)))
    if segments_BT is None:
        allowed = torch.ones(T, T, dtype=torch.bool, device=q_BHTD.device).tril()
    else:
        allowed = document_causal_mask(segments_BT)
    scores_BHTT = scores_BHTT.to(torch.promote_types(scores_BHTT.dtype, torch.float32))
    scores_BHTT = scores_BHTT.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores_BHTT, dim=-1).to(v_BHTD.dtype) @ v_BHTD


def flash_attention_3(fa3: FlashAttention3, q_BHTD: torch.Tensor, k_BKTD: torch.Tensor, v_BKTD: torch.Tensor,
                      segments_BT: torch.Tensor | None) -> torch.Tensor:
    """FlashAttention 3 (``fa3``: its entry points) in its (B, T, H, D) layout; GQA is native.

    FA3 takes only fp16/bf16: inputs in another dtype (fp32 without autocast) run in bf16 and the
    result comes back in V's dtype, as SDPA's would under autocast. With segments the batch is
    flattened to one stream of B*T tokens cut at ``cu_seqlens`` (SPEC 5.2, max_seqlen = T).
    """
    B, H, T, D = q_BHTD.shape
    dtype = v_BKTD.dtype if v_BKTD.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    q, k, v = (t.transpose(1, 2).to(dtype) for t in (q_BHTD, k_BKTD, v_BKTD))
    if segments_BT is None:
        out = fa3.flash_attn_func(q, k, v, causal=True)
    else:
        cu_seqlens = varlen_cu_seqlens(segments_BT, static_shape=torch.compiler.is_compiling())
        out = fa3.flash_attn_varlen_func(q.reshape(B * T, H, D), k.reshape(B * T, -1, D), v.reshape(B * T, -1, D),
                                         cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=T,
                                         max_seqlen_k=T, causal=True)
    out = out[0] if isinstance(out, tuple) else out  # older FA3 builds also return the log-sum-exp
    return out.view(B, T, H, D).transpose(1, 2).to(v_BKTD.dtype)


class CausalSelfAttention(nn.Module):
    """Attention of physical block ``layer_index``; per-layer features (XSA on the last N) read it."""

    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        model_dim = cfg.model_dim
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = model_dim // cfg.num_heads
        kv_dim = cfg.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(model_dim, model_dim)
        self.c_k = CastedLinear(model_dim, kv_dim)
        self.c_v = CastedLinear(model_dim, kv_dim)
        self.proj = CastedLinear(model_dim, model_dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), float(cfg.qk_gain_init)))
        # ROPE_DIMS = 0 rotates the whole head (baseline); otherwise only the first ROPE_DIMS dims.
        self.rotary = Rotary(cfg.rope_dims or self.head_dim, base=cfg.rope_base,
                             train_seq_len=cfg.rope_train_seq_len)
        # (XSA_LAST_N > 0 first: the same answer for every layer, and `pgolf export` can fold it.)
        uses_xsa = cfg.xsa_last_n > 0 and layer_index >= cfg.num_layers - cfg.xsa_last_n
        self.xsa = ExclusiveSelfAttention(cfg.num_heads, cfg.num_kv_heads) if uses_xsa else None
        self.attn_gate = build_attention_output_gate(cfg)
        self.backend = cfg.attention_backend
        self.doc_isolated = cfg.doc_isolated_attention
        # FA3 is looked up once here, never in the forward (which torch.compile traces); for "auto"
        # only when a Hopper GPU is present, the one place auto uses it.
        wants_fa3 = self.backend == "fa3" or (self.backend == "auto" and hopper_gpu_present())
        self.flash_attn_3 = flash_attention_3_entry_points() if wants_fa3 else None

    def attend(self, q_BHTD: torch.Tensor, k_BKTD: torch.Tensor, v_BKTD: torch.Tensor,
               segments_BT: torch.Tensor | None) -> torch.Tensor:
        """(B, H, T, D) attention output through the configured kernel (a Python branch: one graph)."""
        # Segments come only with DOC_ISOLATED_ATTENTION; saying so here lets `pgolf export` drop the
        # document masks and varlen kernel from every other configuration (the value is the same).
        segments = segments_BT if self.doc_isolated else None
        # Decided by the backend name where it can be (eager, a forced SDPA kernel), so that `pgolf export`
        # drops the kernels a configuration never runs; "auto" decides by the tensors' device.
        if self.backend == "eager":
            return eager_attention(q_BHTD, k_BKTD, v_BKTD, segments)
        kernel = choose_attention_kernel(self.backend, on_cuda=q_BHTD.is_cuda,
                                         fa3_ready=self.flash_attn_3 is not None)
        if kernel == "fa3":
            return flash_attention_3(self.flash_attn_3, q_BHTD, k_BKTD, v_BKTD, segments)
        forced = SDPA_BACKENDS[self.backend] if self.backend in FORCED_SDPA_BACKENDS else None
        return sdpa_attention(q_BHTD, k_BKTD, v_BKTD, segments, forced)

    def forward(self, x_BTD: torch.Tensor, segments_BT: torch.Tensor | None = None) -> torch.Tensor:
        """``segments_BT``: document segment ids (``document_segment_ids``) to keep attention inside
        each document, with DOC_ISOLATED_ATTENTION on (ignored when it is off); None = plain causal
        attention over the whole row (the baseline)."""
        B, T, D = x_BTD.shape
        q = self.c_q(x_BTD).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x_BTD).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x_BTD).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        # q/k norm (no weights) keeps attention logits bounded; q_gain then sets their scale per head.
        q, k = F.rms_norm(q, (self.head_dim,)), F.rms_norm(k, (self.head_dim,))
        # RoPE on the first rotary.dim dims of each head (partial RoPE), NTK-rescaled past the training length.
        cos, sin = self.rotary(T, x_BTD.device, q.dtype)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        y_BHTD = self.attend(q, k, v, segments_BT)
        if self.xsa is not None:  # XSA: drop each head's component along its own token's value direction
            y_BHTD = self.xsa(y_BHTD, v)
        if self.attn_gate is not None:  # output gate: scale each head by a gate read from the input x
            y_BHTD = self.attn_gate(x_BTD, y_BHTD)
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, D))
