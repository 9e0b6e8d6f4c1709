// Cosine similarity in register tiles, shared by the fused ops that match (BipartiteMerge) or
// spread (DiverseSelect) tokens by it. fp32: the similarities decide which tokens survive.
#pragma once

#include <cstddef>

namespace trimformer {

// A tile: kTileRows rows of unit vectors against kTileLanes columns (one AVX-512 vector).
// Callers pad the rows and columns to whole tiles with zero vectors and ignore their scores.
constexpr size_t kTileLanes = 16, kTileRows = 8;

// n rounded up to a whole number of tiles of `tile`.
size_t padded(size_t n, size_t tile);

// dst[k * stride] = m[k] / max(|m|, 1e-12) for k < channels: divided as the specs divide, so
// equal vectors stay exactly equal. stride 1 writes a row; stride = padded columns, a column of
// a transposed matrix.
void write_unit(const float* m, size_t channels, float* dst, size_t stride);

// scores[i, j] = rows[i] · columns[:, j] for kTileRows rows (rows: [kTileRows, channels]) and
// every padded column (columns: [channels, padded_columns]; scores: [kTileRows,
// padded_columns]). Each product accumulates over the channels in order, so equal vectors score
// exactly equal and score(a, b) == score(b, a).
void score_tile(const float* rows, const float* columns, size_t channels, size_t padded_columns,
                float* scores);

}  // namespace trimformer
