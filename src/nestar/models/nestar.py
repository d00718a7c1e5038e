"""NestAR: Nested AutoRegressive generation with continuous tokens (docs/design.md, "Factorisation").

N = k^M tokens in a fixed generation order (`orders.py`). Module 1 generates tokens 1..k one at a
time; module m > 1 sees the first k^(m-1) tokens as its first patch and generates k-1 further
patches of k^(m-1) tokens, one patch per step. Sequential steps: M(k-1) + 1.

Each module is a transformer over [condition tokens; content tokens; query tokens]:
- content tokens are known tokens (the prefix and earlier patches of the module), embedded from
  their values plus the position embedding of their grid cell;
- query tokens stand at the cells of a patch to be generated (learned query + position + patch
  index); their outputs become the per-token conditions z of the flow head.
Attention is block-causal at patch granularity (`_mask`): content of patch j sees content of
patches <= j; queries of patch b see content of patches < b and the other queries of patch b.
Training teacher-forces all patches of all modules in one pass per module. Sampling keeps a
preallocated KV cache per module so each step feeds only the newest patch and the next queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import nn

from nestar.config import check_min
from nestar.heads import FlowHeadConfig, build_flow_head
from nestar.layers import ClassEmbedding, KVCache, Transformer
from nestar.models.base import GenerativeModel, GuidedBatch, SampleOutput, TokenModelConfig
from nestar.models.orders import ORDERS, GenerationOrder
from nestar.models.spec import ModelSpec, register_model

_COND, _CONTENT, _QUERY = 0, 1, 2
PREFIX_NOISE_MODES = ("all", "boundary")
LOSS_WEIGHTINGS = ("module", "token")
EMBED_INITS = ("default", "raster")
# the 8 neighbours of a grid cell, (row, column) offsets
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


@dataclass
class NestARConfig(TokenModelConfig):
    """NestAR hyper-parameters (with TokenModelConfig's): the order, k, and one transformer per module.

    `module_dims`/`module_depths`: per-module width/depth (length M), default `dim`/`depth` for all;
    the first module's size is a known lever on diversity. `shared_trunk`: one transformer for all
    modules plus a module embedding. `prefix_noise`: max level s of the coordination augmentation
    x <- (1-s) x + s*eps applied to conditioning tokens at training (s ~ U(0, prefix_noise); 0 = off).
    `prefix_noise_mode`: 'all' corrupts every content token, level unknown to the module; 'boundary'
    corrupts only the prefix from earlier modules, tells the module the level, and at sampling noises
    the prefix at the fixed level `sample_prefix_noise` (cascaded-diffusion conditioning augmentation).
    `neighbour_context` (default on): each query token also embeds the values of its already-known 8
    neighbours (static tables from the order; nothing from its own or a later patch); off = queries
    carry only position, as in the paper. `loss_weighting`: 'token' (default) weighs every token
    equally; 'module' sums the per-module mean losses (the paper's reading; times `module_loss_weights`).
    `order_offset`: cyclic shift of the order; default 2 puts module 1 at the quadrant centres of an
    8x8 grid with k=4 (0 = the top-left corners, background on centred data; on other grids the
    centres sit at half module 1's spacing, e.g. 4 on 16x16). `embed_init`: 'default' (PyTorch's)
    or 'raster' (truncated normal 0.02, as raster AR).
    `rollout_prob`: the rollout objective; for that fraction of the training samples, module m+1
    conditions on the prefix as the model itself draws it (module m's tokens sampled by the head with
    `rollout_steps` head steps from the teacher-forced conditions, no guidance, no gradient) while its
    targets stay the real tokens; 0 = plain teacher forcing.
    """

    # Fields that change only how the model is trained, not the network: a resume may change them
    # (a fine-tune phase) with --allow-config-change, and the change is recorded in the run's history.
    TRAINING_ONLY: ClassVar[tuple[str, ...]] = ("rollout_prob", "rollout_steps")

    grid_size: int = 8
    token_dim: int = 16
    k: int = 4
    order: str = "lattice"
    depth: int = 4
    module_dims: Optional[tuple[int, ...]] = None
    module_depths: Optional[tuple[int, ...]] = None
    shared_trunk: bool = False
    num_cond_tokens: int = 1
    z_dim: int = 256
    prefix_noise: float = 0.0
    prefix_noise_mode: str = "all"
    sample_prefix_noise: float = 0.0
    neighbour_context: bool = True
    loss_weighting: str = "token"
    order_offset: int = 2
    embed_init: str = "default"
    module_loss_weights: Optional[tuple[float, ...]] = None
    rollout_prob: float = 0.0
    rollout_steps: int = 8
    head: FlowHeadConfig = field(default_factory=FlowHeadConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min(
            "model.",
            1,
            depth=self.depth,
            z_dim=self.z_dim,
            num_cond_tokens=self.num_cond_tokens,
            k=self.k,
            rollout_steps=self.rollout_steps,
        )
        check_min(
            "model.",
            1,
            **{f"module_dims[{i}]": v for i, v in enumerate(self.module_dims or ())},
            **{f"module_depths[{i}]": v for i, v in enumerate(self.module_depths or ())},
        )
        if self.order not in ORDERS:
            raise ValueError(f"model.order must be one of {ORDERS}, got {self.order!r}")
        m = GenerationOrder(
            self.grid_size, self.k, self.order, self.order_offset
        ).num_modules  # validates
        for name in ("module_dims", "module_depths", "module_loss_weights"):
            v = getattr(self, name)
            if v is not None and len(v) != m:
                raise ValueError(
                    f"model.{name} has {len(v)} entries but this grid/k has M={m} modules"
                )
        if self.shared_trunk and (self.module_dims or self.module_depths):
            raise ValueError(
                "model.shared_trunk=True uses one transformer: unset module_dims/module_depths"
            )
        if not 0 <= self.prefix_noise < 1:
            raise ValueError(f"model.prefix_noise must be in [0, 1), got {self.prefix_noise}")
        if not 0 <= self.rollout_prob <= 1:
            raise ValueError(f"model.rollout_prob must be in [0, 1], got {self.rollout_prob}")
        if not 0 <= self.sample_prefix_noise < 1:
            raise ValueError(
                f"model.sample_prefix_noise must be in [0, 1), got {self.sample_prefix_noise}"
            )
        for name, allowed in (
            ("prefix_noise_mode", PREFIX_NOISE_MODES),
            ("loss_weighting", LOSS_WEIGHTINGS),
            ("embed_init", EMBED_INITS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"model.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.sample_prefix_noise and self.prefix_noise_mode != "boundary":
            raise ValueError(
                "model.sample_prefix_noise needs model.prefix_noise_mode='boundary' (the module "
                "must be told the level it is trained with)"
            )

    def widths(self) -> tuple[int, ...]:
        return (self.dim, *(self.module_dims or ()))


class ModuleNet(nn.Module):
    """The transformer of one module: embeds [cond; content; queries] and returns z at the queries."""

    def __init__(self, cfg: NestARConfig, width: int, depth: int, num_module_embeddings: int = 0):
        super().__init__()
        n = cfg.grid_size**2
        self.cfg = cfg
        self.class_emb = ClassEmbedding(cfg.num_classes, width)
        self.cond_pos = nn.Parameter(torch.zeros(cfg.num_cond_tokens, width))
        self.token_in = nn.Linear(cfg.token_dim, width)
        self.pos = nn.Parameter(torch.zeros(n, width))  # indexed by raster position
        self.query = nn.Parameter(torch.zeros(width))
        self.patch_emb = nn.Parameter(
            torch.zeros(cfg.k + 1, width)
        )  # index of the patch in its module
        self.module_emb = (
            nn.Parameter(torch.zeros(num_module_embeddings, width))
            if num_module_embeddings
            else None
        )
        # neighbour values + known flags of each query token; the level of the prefix noise
        self.neighbour_in = (
            nn.Linear(len(_NEIGHBOURS) * (cfg.token_dim + 1), width)
            if cfg.neighbour_context
            else None
        )
        self.level_in = (
            nn.Linear(1, width, bias=False) if cfg.prefix_noise_mode == "boundary" else None
        )
        for p in (self.cond_pos, self.pos, self.query, self.patch_emb):
            nn.init.trunc_normal_(p, std=0.02)
        if cfg.embed_init == "raster":
            nn.init.trunc_normal_(self.class_emb.weight, std=0.02)
            nn.init.trunc_normal_(self.token_in.weight, std=0.02)
            nn.init.zeros_(self.token_in.bias)
        self.transformer = Transformer(width, depth, max(1, width // cfg.head_dim), cfg.mlp_ratio)
        self.z_out = nn.Linear(width, cfg.z_dim)

    def embed(
        self,
        labels_B: Optional[torch.Tensor],
        content_BnC: torch.Tensor,
        content_pos: torch.Tensor,
        query_pos: torch.Tensor,
        query_patch: torch.Tensor,
        module: int,
        neighbours_BqF: Optional[torch.Tensor] = None,
        level_B: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Input embeddings; `labels_B` None means the condition tokens are already in the cache.

        `neighbours_BqF`: the queries' known-neighbour features (`neighbour_context`); `level_B`: the
        prefix noise level told to the module ('boundary' mode), added to the condition tokens.
        """
        b = content_BnC.shape[0]
        parts = []
        if labels_B is not None:
            cond = self.class_emb.tokens(labels_B, self.cond_pos)
            if self.level_in is not None:
                lv = level_B if level_B is not None else torch.zeros(b, device=cond.device)
                cond = cond + self.level_in(lv[:, None].to(cond.dtype))[:, None, :]
            parts.append(cond)
        if content_BnC.shape[1]:
            parts.append(self.token_in(content_BnC) + self.pos[content_pos][None])
        queries = (self.query + self.pos[query_pos] + self.patch_emb[query_patch])[None].expand(
            b, -1, -1
        )
        if self.neighbour_in is not None:
            queries = queries + self.neighbour_in(neighbours_BqF)
        parts.append(queries)
        h = torch.cat(parts, dim=1)
        if self.module_emb is not None:
            h = h + self.module_emb[module - 1]
        return h

    def forward(
        self,
        h_BLD: torch.Tensor,
        mask: torch.Tensor,
        num_queries: int,
        caches: Optional[list[KVCache]] = None,
        start: int = 0,
    ) -> torch.Tensor:
        out = self.transformer(h_BLD, mask, caches, start)
        return self.z_out(out[:, -num_queries:])


class NestAR(GenerativeModel):
    """Nested AutoRegressive model with a rectified-flow MLP head."""

    def __init__(self, config: NestARConfig):
        super().__init__()
        cfg = config
        self.config, self.num_classes = cfg, cfg.num_classes
        self.order = GenerationOrder(cfg.grid_size, cfg.k, cfg.order, cfg.order_offset)
        self.num_modules = self.order.num_modules
        M = self.num_modules
        if cfg.shared_trunk:
            self.trunks = nn.ModuleList(
                [ModuleNet(cfg, cfg.dim, cfg.depth, num_module_embeddings=M)]
            )
        else:
            dims = cfg.module_dims or (cfg.dim,) * M
            depths = cfg.module_depths or (cfg.depth,) * M
            self.trunks = nn.ModuleList(ModuleNet(cfg, d, L) for d, L in zip(dims, depths))
        # a joint head (cfg.head.kind='joint') sees one patch at a time: S tokens, at most k^(M-1)
        max_patch = max(self.order.layout(m)[1] for m in range(1, M + 1))
        self.head = build_flow_head(cfg.token_dim, cfg.z_dim, cfg.head, max_group=max_patch)
        self.register_buffer("perm", self.order.perm.clone(), persistent=False)
        self.register_buffer("inv_perm", self.order.inv_perm.clone(), persistent=False)
        self._plans = {m: self._plan(m) for m in range(1, M + 1)}
        if (
            cfg.neighbour_context
        ):  # buffers, so they move with the model instead of being copied every step
            for m in range(1, M + 1):
                idx, known = self._neighbour_table(m)
                self.register_buffer(f"nb_idx_m{m}", idx, persistent=False)
                self.register_buffer(f"nb_known_m{m}", known, persistent=False)

    # ----- layout ---------------------------------------------------------------------------
    def trunk(self, m: int) -> ModuleNet:
        return self.trunks[0 if self.config.shared_trunk else m - 1]

    def _plan(self, m: int) -> dict:
        """Static index tensors of module m for teacher-forced training.

        Content = the prefix (patch label 0; module 1 has none) and target patches 1..T-1;
        queries = target patches 1..T. Labels give each token's patch index for the mask.
        """
        P, S, T = self.order.layout(m)
        n_content = P + (T - 1) * S
        content_lab = torch.cat(
            [torch.zeros(P, dtype=torch.long), torch.arange(1, T).repeat_interleave(S)]
        )
        query_lab = torch.arange(1, T + 1).repeat_interleave(S)
        return dict(
            P=P, S=S, T=T, n_content=n_content, content_lab=content_lab, query_lab=query_lab
        )

    def _neighbour_table(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(order index, known) of the 8 neighbours of each query token of module m, (T*S, 8) each.

        Neighbours are taken on the lattice module m completes (stride 4 then 2 then 1 for 8x8, k=4,
        lattice order; 1 for z-order), so a module-2 token sees the anchors around it. A neighbour is
        known iff it comes before the query's own patch in the order, so a query never sees a value of
        its own or a later patch (tests/test_nestar.py checks the gradients).
        """
        P, S, T = self.order.layout(m)
        g = self.config.grid_size
        sr, sc = self.order.strides(P + T * S)
        q = torch.arange(P, P + T * S)
        cell = self.order.perm[q]
        r, c = cell // g, cell % g
        patch_start = P + (q - P) // S * S
        idx = torch.zeros(len(q), len(_NEIGHBOURS), dtype=torch.long)
        known = torch.zeros(len(q), len(_NEIGHBOURS), dtype=torch.bool)
        for j, (dr, dc) in enumerate(_NEIGHBOURS):
            rr, cc = r + dr * sr, c + dc * sc
            inside = (rr >= 0) & (rr < g) & (cc >= 0) & (cc < g)
            o = self.order.inv_perm[rr.clamp(0, g - 1) * g + cc.clamp(0, g - 1)]
            known[:, j] = inside & (o < patch_start)
            idx[:, j] = torch.where(known[:, j], o, 0)
        return idx, known

    def neighbour_table(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (order index, known) tables of module m built at init (`neighbour_context` only)."""
        return getattr(self, f"nb_idx_m{m}"), getattr(self, f"nb_known_m{m}")

    def _neighbour_features(
        self, m: int, rows: slice, src_BnC: torch.Tensor
    ) -> Optional[torch.Tensor]:
        """Known-neighbour values and flags of the query rows `rows` of module m, gathered from `src_BnC`."""
        if not self.config.neighbour_context:
            return None
        idx, known = self.neighbour_table(m)
        idx, known = idx[rows], known[rows]
        vals = src_BnC[:, idx] * known[None, :, :, None].to(src_BnC.dtype)  # (B, q, 8, C)
        flags = known[None].to(src_BnC.dtype).expand(src_BnC.shape[0], -1, -1)
        return torch.cat([vals.flatten(2), flags], dim=-1)

    def _mask(self, content_lab: torch.Tensor, query_lab: torch.Tensor) -> torch.Tensor:
        """Boolean (L, L) attention mask, True = may attend, over [cond; content; queries]."""
        c = self.config.num_cond_tokens
        kind = torch.cat(
            [
                torch.full((c,), _COND),
                torch.full((len(content_lab),), _CONTENT),
                torch.full((len(query_lab),), _QUERY),
            ]
        )
        lab = torch.cat([torch.zeros(c, dtype=torch.long), content_lab, query_lab])
        ki, kj = kind[:, None], kind[None, :]
        li, lj = lab[:, None], lab[None, :]
        allowed = (
            (kj == _COND)
            | ((ki == _CONTENT) & (kj == _CONTENT) & (lj <= li))
            | ((ki == _QUERY) & (((kj == _CONTENT) & (lj < li)) | ((kj == _QUERY) & (lj == li))))
        )
        return allowed

    def sequential_steps(self) -> int:
        return self.order.sequential_steps()

    def transformers(self) -> list[Transformer]:
        return [t.transformer for t in self.trunks]

    # ----- training -------------------------------------------------------------------------
    def module_conditions(
        self,
        m: int,
        x_ord_BNC: torch.Tensor,
        labels_B: torch.Tensor,
        noise_level_B: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Teacher-forced conditions z (B, T*S, z_dim) for all target tokens of module m."""
        pl = self._plans[m]
        dev = x_ord_BNC.device
        P, S, T = pl["P"], pl["S"], pl["T"]
        content = x_ord_BNC[:, : pl["n_content"]]
        if (
            noise_level_B is not None
        ):  # prefix-noise coordination: corrupt what the module conditions on
            noisy = self._noised(
                content if self.config.prefix_noise_mode == "all" else content[:, :P], noise_level_B
            )
            content = (
                noisy
                if self.config.prefix_noise_mode == "all"
                else torch.cat([noisy, content[:, P:]], 1)
            )
        content_pos = self.perm[: pl["n_content"]]
        query_pos = self.perm[P : P + T * S]
        trunk = self.trunk(m)
        nb = self._neighbour_features(m, slice(None), content)
        h = trunk.embed(
            labels_B, content, content_pos, query_pos, pl["query_lab"].to(dev), m, nb, noise_level_B
        )
        mask = self._mask(pl["content_lab"], pl["query_lab"]).to(dev)
        return trunk(h, mask, num_queries=T * S)

    @staticmethod
    def _noised(
        x_BnC: torch.Tensor, level_B: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> torch.Tensor:
        """x <- (1 - s) x + s eps, one level s per sample."""
        s = level_B[:, None, None].to(x_BnC.dtype)
        eps = torch.randn(x_BnC.shape, generator=generator, device=x_BnC.device, dtype=x_BnC.dtype)
        return (1 - s) * x_BnC + s * eps

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens_BLC, labels_B = batch["tokens"], batch["labels"]
        cfg = self.config
        x_ord = tokens_BLC[:, self.perm]
        labels_B = self.drop_labels(labels_B, cfg.label_dropout)
        weights = cfg.module_loss_weights or (1.0,) * self.num_modules
        x_in = x_ord  # what the modules condition on: the real tokens, or rolled-out ones
        roll_B = None
        if self.training and cfg.rollout_prob > 0:
            roll_B = torch.rand(x_ord.shape[0], device=x_ord.device) < cfg.rollout_prob
        out, total = {}, 0.0
        for m in range(1, self.num_modules + 1):
            noise = None
            if self.training and cfg.prefix_noise > 0 and m > 1:
                noise = torch.rand(x_ord.shape[0], device=x_ord.device) * cfg.prefix_noise
            z = self.module_conditions(m, x_in, labels_B, noise)
            P, S, T = self.order.layout(m)
            loss_m = self.head.loss(x_ord[:, P : P + T * S], z, group_size=S)
            out[f"loss_m{m}"] = loss_m.detach()
            # 'token': module m's mean counts by its share of the tokens, so the sum is a per-token mean
            share = T * S / self.order.num_tokens if cfg.loss_weighting == "token" else 1.0
            total = total + weights[m - 1] * share * loss_m
            if roll_B is not None and m < self.num_modules:
                x_in = self._rollout(x_in, z, roll_B, slice(P, P + T * S), S)
        out["loss"] = total
        return out

    def _rollout(
        self, x_in: torch.Tensor, z: torch.Tensor, roll_B: torch.Tensor, rows: slice, S: int
    ) -> torch.Tensor:
        """`x_in` with the tokens `rows` (module m's targets) of the samples in `roll_B` replaced by
        head draws from the teacher-forced conditions z: the next module's prefix as the model would
        produce it (each patch given the real earlier patches, so one pass, not T steps). Every row is
        drawn and then selected, so no collective (FSDP) depends on the random selection."""
        x_hat = self.head.sample(
            z.detach().reshape(-1, z.shape[-1]), num_steps=self.config.rollout_steps, group_size=S
        )
        x_hat = x_hat.reshape(z.shape[0], -1, x_in.shape[-1]).to(x_in.dtype)
        x_in = x_in.clone()
        x_in[:, rows] = torch.where(roll_B[:, None, None], x_hat, x_in[:, rows])
        return x_in

    # ----- sampling -------------------------------------------------------------------------
    def _sample(self, run: GuidedBatch, *, use_cache: bool = True) -> SampleOutput:
        """Module by module, one patch per step; `use_cache=False` recomputes the full sequence every
        step (reference path). Guidance acts on the head's velocity over all channels."""
        B, N, C, c = (
            run.batch,
            self.order.num_tokens,
            self.config.token_dim,
            self.config.num_cond_tokens,
        )
        lab, dev, B2 = run.batch_labels, run.device, run.batch_labels.shape[0]
        x_ord = torch.zeros(B2, N, C, device=dev, dtype=run.dtype)
        intermediates, known = [], []
        for m in range(1, self.num_modules + 1):
            P, S, T = self.order.layout(m)
            trunk = self.trunk(m)
            caches = (
                trunk.transformer.new_caches(B2, c + P + T * S, run.dtype, dev)
                if use_cache
                else None
            )
            x_in, level = self._sampling_prefix(x_ord, P, run)
            start = 0
            for b in range(1, T + 1):
                n_content = P + (b - 1) * S
                content_lab = torch.cat(
                    [torch.zeros(P, dtype=torch.long), torch.arange(1, b).repeat_interleave(S)]
                )
                query_lab = torch.full((S,), b, dtype=torch.long)
                query_pos = self.perm[n_content : n_content + S]
                mask = self._mask(content_lab, query_lab).to(dev)
                nb = self._neighbour_features(m, slice((b - 1) * S, b * S), x_in)
                if use_cache:
                    new_from = 0 if b == 1 else n_content - S
                    h = trunk.embed(
                        lab if b == 1 else None,
                        x_in[:, new_from:n_content],
                        self.perm[new_from:n_content],
                        query_pos,
                        query_lab.to(dev),
                        m,
                        nb,
                        level,
                    )
                    z = trunk(h, mask[-h.shape[1] :], S, caches, start)
                    start += (
                        h.shape[1] - S
                    )  # queries' K/V are scratch: the next patch overwrites them
                else:
                    h = trunk.embed(
                        lab,
                        x_in[:, :n_content],
                        self.perm[:n_content],
                        query_pos,
                        query_lab.to(dev),
                        m,
                        nb,
                        level,
                    )
                    z = trunk(h, mask, S)
                x_new = run.draw(self.head, z, (n_content + S) / N, group_size=S)
                for x in (
                    (x_ord,) if x_in is x_ord else (x_ord, x_in)
                ):  # x_in: the noised-prefix copy
                    run.write(x, slice(n_content, n_content + S), x_new)
            intermediates.append(self.order.preview(x_ord[:B, :, :][:, self.inv_perm], P + T * S))
            known.append(self.order.known_mask(P + T * S))
        return SampleOutput(
            tokens=x_ord[:B, self.inv_perm],
            intermediates=intermediates,
            sequential_steps=self.sequential_steps(),
            known=known,
        )

    def _sampling_prefix(
        self, x_ord: torch.Tensor, P: int, run: GuidedBatch
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """What a module reads at sampling: x_ord itself, or ('boundary' mode with `sample_prefix_noise`)
        a copy whose prefix is noised at the fixed level, one noise draw shared by both guidance halves."""
        cfg = self.config
        if cfg.prefix_noise_mode != "boundary":
            return x_ord, None
        level = torch.full(
            (x_ord.shape[0],), cfg.sample_prefix_noise if P else 0.0, device=x_ord.device
        )
        if not (P and cfg.sample_prefix_noise):
            return x_ord, level
        x_in = x_ord.clone()
        B = run.batch
        run.write(x_in, slice(0, P), self._noised(x_ord[:B, :P], level[:B], run.generator))
        return x_in, level


register_model(
    ModelSpec(
        "nestar",
        NestARConfig,
        NestAR,
        "NestAR: nested AR, one patch of k^(m-1) tokens per step",
        presets={"tiny": "nestar-tiny", "s": "nestar-s", "fmnist": "nestar-fmnist"},
    )
)
