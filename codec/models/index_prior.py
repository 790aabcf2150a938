"""The vq family's learned entropy model: a bidirectional transformer over the index map.

The map is coded in TILE x TILE tiles, each on its own (the size of the training maps): the
attention, quadratic in the positions it sees, then costs time linear in the image's pixels and the
memory of TILE_BATCH tiles, whatever the size a header claims. Within a tile, positions are coded in
a fixed number of parallel steps (MaskGIT-style): they are split into `lattice`^2 groups by their
place in a lattice x lattice cell; step g codes group g with a distribution predicted from every
index of the groups before it (the rest masked), so a decoder runs the network `lattice`^2 times a
batch of tiles. The same network, trained with random
masking ratios, can later predict indices lost from a damaged packet.

One network serves every codebook size. A known index enters as its code vector (so a clustered
codebook needs no embedding table of its own) plus an embedding of log2 K; the output is a
distribution over the main codebook, marginalised onto a clustered codebook through its mapping
(P(cluster j) = sum of P(code i) over the codes i that cluster into j). Positions enter through a
depthwise convolution over the token grid, which holds for any tile shape (edge tiles are smaller
than the 16x16 of the training crops). A region of interest may take its indices from a second,
larger codebook: each known index enters in its own codebook, with that codebook's size embedding.

Shapes: indices (B, h, w) int64 in [0, K); codes (K, code_dim); mapping (K_main,) -> [0, K).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

TILE = 16         # index-map tile side coded on its own: 256-pixel training crops give 16 x 16 maps
TILE_BATCH = 64   # tiles of one shape run through the network together


class IndexPrior(nn.Module):
    def __init__(self, codebook_size: int, code_dim: int = 16, dim: int = 256, depth: int = 4, heads: int = 8,
                 head_rank: int = 128, lattice: int = 3):
        super().__init__()
        self.codebook_size, self.lattice = codebook_size, lattice
        self.token = nn.Linear(code_dim, dim)
        self.mask = nn.Parameter(torch.zeros(dim))
        self.level = nn.Embedding(max(codebook_size.bit_length(), 2), dim)
        self.position = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        # Low-rank head: the codes are only code_dim-dimensional, and a full dim x K layer would
        # dominate the weights file.
        self.head = nn.Sequential(nn.Linear(dim, head_rank), nn.Linear(head_rank, codebook_size))

    def forward(self, indices: torch.Tensor, known: torch.Tensor, codes: torch.Tensor,
                select: torch.Tensor | None = None) -> torch.Tensor:
        """indices (B, h, w) into `codes`, known (B, h, w) bool -> logits (B, h, w, K_main) over the
        main codebook; unknown indices are ignored. With `select` (B, h, w) bool: logits (N, K_main)
        of the selected positions only (the output layer is most of the cost)."""
        b, h, w = indices.shape
        k = codes.shape[0]
        x = self.token(codes.to(self.token.weight.dtype))[indices]  # (B, h, w, dim)
        x = torch.where(known[..., None], x, self.mask) + self.level.weight[k.bit_length() - 1]
        x = x + self.position(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.blocks(x.reshape(b, h * w, -1)).view(b, h, w, -1)
        if select is not None:
            return self.head(self.norm(x[select]))
        return self.head(self.norm(x))

    def groups(self, h: int, w: int, device=None) -> list[torch.Tensor]:
        """Bool masks (h, w), one per coding step, partitioning the map. Groups are taken in an order
        that spreads the early ones over the cell (every other row and column first); a map smaller
        than the cell has no empty ones."""
        s = self.lattice
        i = torch.arange(h, device=device)[:, None] % s
        j = torch.arange(w, device=device)[None, :] % s
        order = sorted(range(s * s), key=lambda g: (_spread(g // s, s), _spread(g % s, s)))
        return [(i == g // s) & (j == g % s) for g in order if g // s < h and g % s < w]

    def loss(self, indices: torch.Tensor, codes: torch.Tensor, mapping: torch.Tensor,
             scheduled: float = 0.0) -> torch.Tensor:
        """Training: hide a random share of each map (cosine schedule, as MaskGIT) and predict it.
        A `scheduled` share of the maps instead predicts one coding group from the groups before it,
        exactly what compress() asks of the network. Returns cross-entropy in bits per hidden index,
        marginalised onto the codebook `codes`."""
        b, h, w = indices.shape
        dev = indices.device
        ratio = torch.cos(torch.rand(b, 1, 1, device=dev) * math.pi / 2)  # share hidden
        hidden = torch.rand(b, h, w, device=dev) < ratio
        known = ~hidden
        if scheduled:
            groups = torch.stack(self.groups(h, w, device=dev))  # (G, h, w)
            step = torch.randint(len(groups), (b,), device=dev)
            before = torch.arange(len(groups), device=dev)[None, :] < step[:, None]  # (b, G)
            coded = (torch.rand(b, device=dev) < scheduled)[:, None, None]
            hidden = torch.where(coded, groups[step], hidden)
            known = torch.where(coded, (groups[None] & before[..., None, None]).any(1), known)
        # At least one hidden index a map, so the loss is never a mean over nothing.
        hidden |= F.one_hot(torch.randint(h * w, (b,), device=dev), h * w).view(b, h, w).bool()
        logits = self(indices, known & ~hidden, codes, hidden).float()
        return -self.log2_prob(logits, indices[hidden], mapping, len(codes)).mean()

    @torch.no_grad()
    def coded_bits(self, indices: torch.Tensor, codes: torch.Tensor, mapping: torch.Tensor) -> float:
        """Bits an index that compress() spends on these maps (B, h, w), to within the coder's
        rounding: each tile on its own, each group predicted from the groups before it."""
        total = 0.0
        for batch in tile_batches(*indices.shape[1:]):
            maps = gather_tiles(indices, batch)
            known = torch.zeros_like(maps, dtype=torch.bool)
            for group in self.groups(*maps.shape[1:], device=maps.device):
                select = group.expand_as(known)
                logits = self(maps, known, codes, select).float()
                total -= self.log2_prob(logits, maps[select], mapping, len(codes)).sum().item()
                known |= select
        return total / indices.numel()

    def log2_prob(self, logits: torch.Tensor, target: torch.Tensor, mapping: torch.Tensor, k: int) -> torch.Tensor:
        """(N, K_main) logits, (N,) indices into a codebook of k -> (N,) log2 probabilities of
        the targets, summed over the main codes that cluster into each target."""
        if k == self.codebook_size:
            log_p = -F.cross_entropy(logits, target, reduction="none")
        else:
            members = mapping[None, :] == target[:, None]
            log_p = torch.logsumexp(logits.masked_fill(~members, -math.inf), 1) - torch.logsumexp(logits, 1)
        return log_p / math.log(2)

    def pmf(self, logits: torch.Tensor, mapping: torch.Tensor, k: int) -> np.ndarray:
        """(N, K_main) logits -> (N, k) float64 probabilities over the codebook in use."""
        p = torch.softmax(logits.double(), -1)
        if k != self.codebook_size:
            p = torch.zeros(p.shape[0], k, dtype=p.dtype, device=p.device).index_add_(1, mapping, p)
        return p.cpu().numpy()

    def integer(self, device: torch.device | str | None = None):
        """The integer-only copy of this prior that compress/decompress code with (IntegerPrior, in
        codec.models.integer_prior): built from the weights on first use and cached per device (the
        weights are frozen at inference). Kept out of the module's children: no state_dict keys."""
        device = torch.device(device if device is not None else self.token.weight.device)
        cache = self.__dict__.setdefault("_integer", {})
        if device not in cache:
            from codec.models.integer_prior import IntegerPrior
            cache[device] = IntegerPrior(self).to(device)
        return cache[device]

    @torch.no_grad()
    def compress(self, indices: torch.Tensor, codes: torch.Tensor, mapping: torch.Tensor,
                 region: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> bytes:
        """indices (h, w) into `codes` -> bytes: one range-coder stream; per batch of tiles and group,
        the CDF rows of its positions (those of a region after the rest). The rows come from the
        integer path (`integer()`), identical on every machine. region: (codes, mapping, where (h, w)
        bool) of a second, larger codebook that the indices at `where` are into."""
        from bitstream.coder import Encoder  # here: a training machine may lack the coder's build
        enc = Encoder()
        for maps, rows in self._coding_steps(indices[None].to(codes.device), codes, mapping, region):
            for chosen, cdf in rows:
                enc.encode_rows(maps[chosen].cpu().numpy(), cdf)
        return enc.finish()

    @torch.no_grad()
    def decompress(self, data: bytes, h: int, w: int, codes: torch.Tensor, mapping: torch.Tensor,
                   region: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """bytes -> indices (h, w), running the integer network once per batch of tiles and group
        as compress did."""
        from bitstream.coder import Decoder
        indices = torch.zeros((1, h, w), dtype=torch.long, device=codes.device)
        dec = Decoder(data)
        for maps, rows in self._coding_steps(indices, codes, mapping, region):
            for chosen, cdf in rows:
                maps[chosen] = torch.from_numpy(dec.decode_rows(cdf)).long().to(maps.device)
        dec.end()  # no byte left over, none missing
        return indices[0]

    @torch.no_grad()
    def recover(self, indices: torch.Tensor, known: torch.Tensor, codes: torch.Tensor, mapping: torch.Tensor,
                vectors: list[torch.Tensor], region: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """indices (h, w) with the `known` (h, w) ones received -> (every index, the expected code
        vector (h, w, code_dim) at each unknown one, zero elsewhere). Per batch of tiles, one masked
        prediction of every unknown index from the known ones; its distribution gives the expected
        code (over `vectors`, the code vectors the decoder looks indices up in: the codebook's, and
        the region's), the least squared error in the code space, and the index of the code nearest
        it (unit codes: the largest dot product, in integers, so every machine restores the same
        indices). MaskGIT's rounds, feeding confident guesses back as context, restored worse on
        Kodak (CHANGELOG 0.4.0). region: as compress's."""
        from codec.models.integer_prior import OUT_ROWS, unit_codes
        net = self.integer(codes.device)
        books = [(net.tokens(codes), mapping, unit_codes(codes).double(), vectors[0])]
        if region is not None:
            books.append((net.tokens(region[0]), region[1], unit_codes(region[0]).double(), vectors[1]))
        indices, known = indices[None].clone().to(codes.device), known[None].to(codes.device)
        means = torch.zeros((*indices.shape, vectors[0].shape[1]), device=codes.device)
        where = torch.zeros_like(known) if region is None else region[2][None].to(codes.device)
        for batch in tile_batches(*indices.shape[1:]):
            maps, seen, inside = gather_tiles(indices, batch), gather_tiles(known, batch), gather_tiles(where, batch)
            hidden = ~seen
            if not hidden.any():
                continue
            features = net.features(maps, seen, books[0][0], hidden,
                                    region=None if region is None else (books[1][0], inside))
            guess = torch.zeros(features.shape[0], dtype=torch.long, device=maps.device)
            mean = torch.zeros((features.shape[0], means.shape[-1]), device=maps.device)
            for (_, book_mapping, unit, book_vectors), chosen in zip(books, (~inside[hidden], inside[hidden])):
                rows = chosen.nonzero().flatten()
                for r in rows.split(OUT_ROWS):  # a block of rows at a time: K-wide rows are large
                    freq = net.frequencies(features[r], book_mapping, len(unit))
                    mean[r] = (freq.double() / net.total).float() @ book_vectors.float()
                    # Integers below 2^53 throughout: float64 sums them exactly, in any order.
                    guess[r] = ((freq.double() @ unit) @ unit.T).argmax(1)
            maps[hidden] = guess
            scatter_tiles(indices, batch, maps)
            tiles = torch.zeros((*maps.shape, means.shape[-1]), device=maps.device)
            tiles[hidden] = mean
            for (t, l, th, tw), tile in zip(batch, tiles):
                means[0, t:t + th, l:l + tw] = tile
        return indices[0], means[0]

    def _coding_steps(self, indices: torch.Tensor, codes: torch.Tensor, mapping: torch.Tensor, region):
        """The coding order shared by compress and decompress. Yields, per batch of tiles and group,
        (the batch's maps, [(positions chosen (bool like maps), their CDF rows), ...]) for the caller to
        code or fill in; the maps go back into `indices` (1, h, w) once the batch's groups are done."""
        net = self.integer(codes.device)
        tokens = net.tokens(codes)
        second = None if region is None else (net.tokens(region[0]), region[1], region[0].shape[0])
        where = None if region is None else region[2][None].to(codes.device)
        for batch in tile_batches(*indices.shape[1:]):
            maps = gather_tiles(indices, batch)
            inside = None if where is None else gather_tiles(where, batch)
            known = torch.zeros_like(maps, dtype=torch.bool)
            for group in self.groups(*maps.shape[1:], device=maps.device):
                select = group[None].expand_as(maps)
                features = net.features(maps, known, tokens, group[None],
                                        region=None if second is None else (second[0], inside))
                books = [(select if inside is None else select & ~inside, mapping, len(codes))]
                if second is not None:
                    books.append((select & inside, second[1], second[2]))
                rows = []
                for chosen, book_mapping, k in books:  # the rows of each codebook's positions, in order
                    picked = chosen[select]
                    if picked.any():
                        rows.append((chosen, net.cdf(net.frequencies(features[picked], book_mapping, k))))
                yield maps, rows
                known |= select
            scatter_tiles(indices, batch, maps)


def tile_batches(h: int, w: int) -> list[list[tuple[int, int, int, int]]]:
    """An h x w map's TILE x TILE tiles (top, left, height, width), in raster order, grouped by
    shape (edge tiles are smaller) into batches of at most TILE_BATCH."""
    by_shape: dict[tuple[int, int], list] = {}
    for top in range(0, h, TILE):
        for left in range(0, w, TILE):
            shape = (min(TILE, h - top), min(TILE, w - left))
            by_shape.setdefault(shape, []).append((top, left, *shape))
    return [tiles[i:i + TILE_BATCH] for tiles in by_shape.values() for i in range(0, len(tiles), TILE_BATCH)]


def gather_tiles(maps: torch.Tensor, batch: list[tuple[int, int, int, int]]) -> torch.Tensor:
    """(B, h, w) maps, a batch of same-shaped tiles -> (len(batch) * B, th, tw), tile-major."""
    return torch.cat([maps[:, t:t + th, l:l + tw] for t, l, th, tw in batch])


def scatter_tiles(maps: torch.Tensor, batch: list[tuple[int, int, int, int]], tiles: torch.Tensor) -> None:
    """gather_tiles' inverse: write the tiles back into the (B, h, w) maps."""
    for (t, l, th, tw), tile in zip(batch, tiles.split(maps.shape[0])):
        maps[:, t:t + th, l:l + tw] = tile


def _spread(r: int, s: int) -> int:
    """Rank of tile row/column r when even ones come first: 0, 2, 4, ..., 1, 3, ..."""
    return r // 2 if r % 2 == 0 else (s + 1) // 2 + r // 2
