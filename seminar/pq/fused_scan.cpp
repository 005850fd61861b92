// Fast-scan ADC with the shortlist collection fused into the scan (seminar.pq.fused_scan).
//
// Codes are in faiss's IndexPQFastScan block layout (bbs 32, seminar.pq.faiss_scan.pack_fastscan):
// a block of 32 events holds 16 bytes per sub-quantizer, byte j = codes of events PERM0[j] (low
// nibble) and PERM0[j] + 16 (high nibble). Look-up tables are quantized to uint8 per query (the
// caller does it); a score is the uint16 sum of one entry per sub-quantizer, higher is better.
//
// Per query: the first blocks of a strided sample are scanned into a buffer, the shortlist
// threshold is read off that sample (the value a few times deeper than the shortlist's expected
// share of it), and every other block is only compared against the threshold in registers: the
// events that pass are appended to a small buffer, which is cut back to the best k whenever it
// fills. Nothing else leaves the registers, so the collection costs a compare per 16 scores.
// If fewer than k events pass (the sample misled), the query is scanned again keeping all.
//
// Built by `make setup` (python -m seminar.pq.fused_scan --build); without it, or on a CPU
// without AVX2, seminar.pq.fused_scan falls back to faiss.

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

namespace {

constexpr int kBlock = 32;  // events per fast-scan block

// A shortlist entry as one integer, value above and id below (inverted): the larger key is
// the higher value, then the lower id, a strict total order, so the top-k is one set and
// selecting it compares integers.
using Entry = uint64_t;

inline Entry entry(uint16_t value, int32_t id) {
    return (static_cast<uint64_t>(value) << 32) | (UINT32_MAX - static_cast<uint32_t>(id));
}
inline uint16_t value_of(Entry e) { return static_cast<uint16_t>(e >> 32); }
inline int32_t id_of(Entry e) { return static_cast<int32_t>(UINT32_MAX - static_cast<uint32_t>(e)); }

// The 32 scores of one block for NQ queries: low[q] = events 0-15, high[q] = events 16-31.
// AVX2: one 32-byte register holds two sub-quantizers (lane 0 = 2p, lane 1 = 2p + 1).
template <int NQ>
__attribute__((target("avx2"))) inline void block_scores_avx2(
    const uint8_t* codes, const uint8_t* const* luts, int code_size, __m256i* low,
    __m256i* high) {
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256i accu[NQ][4];
    for (int q = 0; q < NQ; ++q)
        for (int a = 0; a < 4; ++a) accu[q][a] = _mm256_setzero_si256();
    for (int p = 0; p < code_size / 2; ++p) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + 32 * p));
        const __m256i c_lo = _mm256_and_si256(c, nibble);
        const __m256i c_hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), nibble);
        for (int q = 0; q < NQ; ++q) {
            const __m256i table =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(luts[q] + 32 * p));
            const __m256i lo = _mm256_shuffle_epi8(table, c_lo);
            const __m256i hi = _mm256_shuffle_epi8(table, c_hi);
            // uint8 -> uint16 sums without unpacking: accu 0 collects even + 256 * odd bytes,
            // accu 1 the odd bytes; even = accu 0 - (accu 1 << 8) at the end (exact mod 2^16).
            accu[q][0] = _mm256_add_epi16(accu[q][0], lo);
            accu[q][1] = _mm256_add_epi16(accu[q][1], _mm256_srli_epi16(lo, 8));
            accu[q][2] = _mm256_add_epi16(accu[q][2], hi);
            accu[q][3] = _mm256_add_epi16(accu[q][3], _mm256_srli_epi16(hi, 8));
        }
    }
    for (int q = 0; q < NQ; ++q) {
        const __m256i even_lo = _mm256_sub_epi16(accu[q][0], _mm256_slli_epi16(accu[q][1], 8));
        const __m256i even_hi = _mm256_sub_epi16(accu[q][2], _mm256_slli_epi16(accu[q][3], 8));
        // add the lanes (sub-quantizers 2p and 2p + 1); even bytes j = 2i hold event i, odd
        // bytes 2i + 1 event 8 + i (PERM0), so [even | odd] is events 0-15 in order
        low[q] = _mm256_add_epi16(_mm256_permute2x128_si256(even_lo, accu[q][1], 0x20),
                                  _mm256_permute2x128_si256(even_lo, accu[q][1], 0x31));
        high[q] = _mm256_add_epi16(_mm256_permute2x128_si256(even_hi, accu[q][3], 0x20),
                                   _mm256_permute2x128_si256(even_hi, accu[q][3], 0x31));
    }
}

// The same with AVX-512BW: one 64-byte register holds four sub-quantizers (lane l = 4p + l).
template <int NQ>
__attribute__((target("avx512f,avx512bw"))) inline void block_scores_avx512(
    const uint8_t* codes, const uint8_t* const* luts, int code_size, __m256i* low,
    __m256i* high) {
    const __m512i nibble = _mm512_set1_epi8(0x0F);
    __m512i accu[NQ][4];
    for (int q = 0; q < NQ; ++q)
        for (int a = 0; a < 4; ++a) accu[q][a] = _mm512_setzero_si512();
    for (int p = 0; p < code_size / 4; ++p) {
        const __m512i c = _mm512_loadu_si512(codes + 64 * p);
        const __m512i c_lo = _mm512_and_si512(c, nibble);
        const __m512i c_hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), nibble);
        for (int q = 0; q < NQ; ++q) {
            const __m512i table = _mm512_loadu_si512(luts[q] + 64 * p);
            const __m512i lo = _mm512_shuffle_epi8(table, c_lo);
            const __m512i hi = _mm512_shuffle_epi8(table, c_hi);
            accu[q][0] = _mm512_add_epi16(accu[q][0], lo);
            accu[q][1] = _mm512_add_epi16(accu[q][1], _mm512_srli_epi16(lo, 8));
            accu[q][2] = _mm512_add_epi16(accu[q][2], hi);
            accu[q][3] = _mm512_add_epi16(accu[q][3], _mm512_srli_epi16(hi, 8));
        }
    }
    for (int q = 0; q < NQ; ++q) {
        __m256i halves[4];
        for (int a = 0; a < 4; a += 2) {
            const __m512i even = _mm512_sub_epi16(accu[q][a], _mm512_slli_epi16(accu[q][a + 1], 8));
            // four lanes -> two: lanes (0 + 2) and (1 + 3), then as in AVX2
            halves[a] = _mm256_add_epi16(_mm512_castsi512_si256(even),
                                         _mm512_extracti64x4_epi64(even, 1));
            halves[a + 1] = _mm256_add_epi16(_mm512_castsi512_si256(accu[q][a + 1]),
                                             _mm512_extracti64x4_epi64(accu[q][a + 1], 1));
        }
        low[q] = _mm256_add_epi16(_mm256_permute2x128_si256(halves[0], halves[1], 0x20),
                                  _mm256_permute2x128_si256(halves[0], halves[1], 0x31));
        high[q] = _mm256_add_epi16(_mm256_permute2x128_si256(halves[2], halves[3], 0x20),
                                   _mm256_permute2x128_si256(halves[2], halves[3], 0x31));
    }
}

class Shortlist {
  public:
    explicit Shortlist(int64_t k) : k_(k) { entries_.reserve(4 * k + kBlock); }

    uint16_t floor() const { return floor_; }  // the least value that may still enter

    void set_floor(uint16_t value) { floor_ = value; }

    __attribute__((always_inline)) void add(uint16_t value, int32_t id) {
        entries_.push_back(entry(value, id));
        if (static_cast<int64_t>(entries_.size()) >= 4 * k_) shrink();
    }

    int64_t size() const { return static_cast<int64_t>(entries_.size()); }

    void clear() {
        entries_.clear();
        floor_ = 0;
    }

    // The best min(k, size) entries (in no particular order: the rerank orders them).
    void finish(int64_t* ids, uint16_t* values) {
        const int64_t n = std::min<int64_t>(k_, size());
        if (n < size())
            std::nth_element(entries_.begin(), entries_.begin() + (n - 1), entries_.end(),
                             std::greater<Entry>());
        for (int64_t i = 0; i < k_; ++i) {
            ids[i] = i < n ? id_of(entries_[i]) : -1;
            values[i] = i < n ? value_of(entries_[i]) : 0;
        }
    }

  private:
    void shrink() {
        std::nth_element(entries_.begin(), entries_.begin() + (k_ - 1), entries_.end(),
                         std::greater<Entry>());
        const uint16_t kth = value_of(entries_[k_ - 1]);
        entries_.resize(k_);
        // later events have larger ids, so only a strictly higher value beats the k-th
        if (kth < UINT16_MAX) floor_ = std::max<uint16_t>(floor_, kth + 1);
    }

    int64_t k_;
    uint16_t floor_ = 0;
    std::vector<Entry> entries_;
};

// Append the events of one block whose score reaches the shortlist's floor.
__attribute__((target("avx2"), always_inline)) inline void collect(
    __m256i scores, int32_t first_id, int64_t n_events, Shortlist* shortlist) {
    const __m256i floor = _mm256_set1_epi16(static_cast<int16_t>(shortlist->floor()));
    // unsigned >=: max(score, floor) == score
    const __m256i pass = _mm256_cmpeq_epi16(_mm256_max_epu16(scores, floor), scores);
    uint32_t mask = static_cast<uint32_t>(_mm256_movemask_epi8(pass)) & 0x55555555u;
    if (!mask) return;
    alignas(32) uint16_t values[16];
    _mm256_store_si256(reinterpret_cast<__m256i*>(values), scores);
    while (mask) {
        const int lane = __builtin_ctz(mask) >> 1;
        mask &= mask - 1;
        const int32_t id = first_id + lane;
        // the floor may have risen inside this block; padding events past the end never enter
        if (id < n_events && values[lane] >= shortlist->floor()) shortlist->add(values[lane], id);
    }
}

// Scores of one block for a group of queries (the NQ of one instantiation above).
using BlockScores = void (*)(const uint8_t*, const uint8_t* const*, int, __m256i*, __m256i*);

constexpr int kGroup = 4;  // queries scored per pass over a block: codes loaded and split once

template <int NQ>
BlockScores pick_kernel(bool wide) {
    return wide ? block_scores_avx512<NQ> : block_scores_avx2<NQ>;
}

struct Scratch {
    std::vector<uint16_t> sample[kGroup];  // the sampled blocks' scores, block order
    std::vector<uint32_t> counts;          // one query's sample histogram
};

// The quantized look-up tables of one query: lut[c][j] ~ scale * (<u_s, centroid[c][j]> - min_j)
// for sub-quantizer c over sub-space s = c % n_subspaces, with one scale per query such that the
// widest table spans [0, 255] (faiss's fast-scan quantization for inner products).
// centroids (code_size, sub_dim, 16) float32; u (n_subspaces * sub_dim,) float32.
__attribute__((target("avx2,fma"))) void quantize_lut(
    const float* __restrict u, const float* __restrict centroids, int code_size,
    int n_subspaces, int sub_dim, float* __restrict scratch, uint8_t* __restrict lut) {
    float span = 0.0f;
    for (int c = 0; c < code_size; ++c) {
        const float* part = u + (c % n_subspaces) * sub_dim;
        float table[16] = {};
        for (int t = 0; t < sub_dim; ++t) {
            const float* row = centroids + (static_cast<int64_t>(c) * sub_dim + t) * 16;
            const float weight = part[t];
            for (int j = 0; j < 16; ++j) table[j] += weight * row[j];
        }
        float low = table[0], high = table[0];
        for (int j = 1; j < 16; ++j) {
            low = std::min(low, table[j]);
            high = std::max(high, table[j]);
        }
        for (int j = 0; j < 16; ++j) scratch[16 * c + j] = table[j] - low;
        span = std::max(span, high - low);
    }
    const float scale = span > 0.0f ? 255.0f / span : 0.0f;
    for (int i = 0; i < 16 * code_size; ++i)
        lut[i] = static_cast<uint8_t>(std::min(255.0f, std::floor(scratch[i] * scale + 0.5f)));
}

// A floor that at least rank + 1 of the n values reach: the lower edge of the histogram bin
// (at most kBins bins over the values' range) where the count from the top passes rank.
constexpr int kBins = 1024;
inline uint16_t histogram_floor(const uint16_t* values, int64_t n, int64_t rank,
                                std::vector<uint32_t>* counts) {
    uint16_t low = UINT16_MAX, high = 0;
    for (int64_t i = 0; i < n; ++i) {
        low = std::min(low, values[i]);
        high = std::max(high, values[i]);
    }
    int shift = 0;
    while ((high - low) >> shift >= kBins) ++shift;
    const int top = (high - low) >> shift;
    counts->assign(top + 1, 0);
    uint32_t* count = counts->data();
    for (int64_t i = 0; i < n; ++i) ++count[(values[i] - low) >> shift];
    int64_t above = 0;
    for (int bin = top; bin > 0; --bin) {
        above += count[bin];
        if (above > rank) return static_cast<uint16_t>(low + (bin << shift));
    }
    return low;
}

// Shortlists of a group of n (<= kGroup) queries; stride 0 = no sample (keep everything).
__attribute__((target("avx2"))) void scan_group(
    const uint8_t* blocks, int64_t n_blocks, int64_t n_events, int code_size,
    const uint8_t* const* luts, int n, BlockScores scores, int64_t k, int64_t stride,
    int64_t depth_percent, Shortlist* shortlists, Scratch* scratch) {
    const int64_t block_bytes = 16 * static_cast<int64_t>(code_size);
    __m256i low[kGroup], high[kGroup];
    for (int q = 0; q < n; ++q) shortlists[q].clear();
    if (stride > 0) {
        // 1. every stride-th block, all 32 scores of each query kept
        int64_t n_real = 0;
        const int64_t n_sampled = (n_blocks + stride - 1) / stride;
        for (int q = 0; q < n; ++q) scratch->sample[q].resize(n_sampled * kBlock);
        for (int64_t b = 0, at = 0; b < n_blocks; b += stride, at += kBlock) {
            scores(blocks + b * block_bytes, luts, code_size, low, high);
            for (int q = 0; q < n; ++q) {
                __m256i* stored = reinterpret_cast<__m256i*>(scratch->sample[q].data() + at);
                _mm256_storeu_si256(stored, low[q]);
                _mm256_storeu_si256(stored + 1, high[q]);
            }
            n_real += std::min<int64_t>(kBlock, n_events - b * kBlock);
        }
        // the shortlist's expected share of the sample, depth_percent / 100 times deeper;
        // padding events (past n_events, only in the last block) are left out
        const int64_t rank = depth_percent * k * n_real / (100 * std::max<int64_t>(n_events, 1));
        for (int q = 0; q < n; ++q) {
            const std::vector<uint16_t>& sample = scratch->sample[q];
            // padding (past n_events) only ends the last block, so it is the sample's tail
            if (rank < n_real) shortlists[q].set_floor(
                    histogram_floor(sample.data(), n_real, rank, &scratch->counts));
            // the sampled blocks' events enter like any other
            for (int64_t b = 0, i = 0; b < n_blocks; b += stride, i += kBlock) {
                const __m256i* stored = reinterpret_cast<const __m256i*>(sample.data() + i);
                const int32_t first = static_cast<int32_t>(b * kBlock);
                collect(_mm256_loadu_si256(stored), first, n_events, &shortlists[q]);
                collect(_mm256_loadu_si256(stored + 1), first + 16, n_events, &shortlists[q]);
            }
        }
    }
    // 2. every other block: compare in registers, append what passes
    for (int64_t b = 0; b < n_blocks; ++b) {
        if (stride > 0 && b % stride == 0) continue;
        scores(blocks + b * block_bytes, luts, code_size, low, high);
        const int32_t first = static_cast<int32_t>(b * kBlock);
        for (int q = 0; q < n; ++q) {
            collect(low[q], first, n_events, &shortlists[q]);
            collect(high[q], first + 16, n_events, &shortlists[q]);
        }
    }
}

}  // namespace

extern "C" {

int seminar_fused_scan_supported() { return __builtin_cpu_supports("avx2") ? 1 : 0; }

// blocks (n_blocks, 16 * code_size) uint8; u (n_queries, n_subspaces * sub_dim) float32, the
// queries; centroids (code_size, sub_dim, 16) float32, sub-quantizer c over sub-space
// c % n_subspaces; out_ids (n_queries, k) int64, the best k (any order; -1 past the end),
// out_values (n_queries, k) uint16 their quantized scores; out_luts (n_queries, code_size, 16)
// uint8 or null. sample_stride 0: no sample, the shortlist floor starts at 0. Returns the
// number of queries scanned a second time (their sample's threshold let fewer than k events
// through), or -1 for arguments it cannot take.
int64_t seminar_fused_scan_topk(const uint8_t* blocks, int64_t n_blocks, int64_t n_events,
                                int code_size, const float* u, const float* centroids,
                                int n_subspaces, int sub_dim, int64_t n_queries, int64_t k,
                                int64_t sample_stride, int64_t depth_percent, int n_threads,
                                int64_t* out_ids, uint16_t* out_values, uint8_t* out_luts) {
    if (code_size <= 0 || code_size % 2 || code_size > 256 || k <= 0 || n_events < 0 ||
        n_events > n_blocks * kBlock || n_events > INT32_MAX || n_subspaces <= 0 ||
        sub_dim <= 0)
        return -1;
    const bool wide = code_size % 4 == 0 && __builtin_cpu_supports("avx512bw");
    const BlockScores kernels[kGroup + 1] = {nullptr, pick_kernel<1>(wide), pick_kernel<2>(wide),
                                             pick_kernel<3>(wide), pick_kernel<4>(wide)};
    const int64_t n_groups = (n_queries + kGroup - 1) / kGroup;
    n_threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n_groups)));
    std::vector<int64_t> rescanned(n_threads, 0);
    const int64_t lut_bytes = 16 * static_cast<int64_t>(code_size);
    const int64_t dim = static_cast<int64_t>(n_subspaces) * sub_dim;
    auto work = [&](int thread) {
        std::vector<Shortlist> shortlists(kGroup, Shortlist(k));
        Scratch scratch;
        std::vector<float> tables(lut_bytes);
        std::vector<uint8_t> group_tables(kGroup * lut_bytes);
        for (int64_t g = thread; g < n_groups; g += n_threads) {
            const int64_t first = g * kGroup;
            const int n = static_cast<int>(std::min<int64_t>(kGroup, n_queries - first));
            const uint8_t* group_luts[kGroup];
            for (int q = 0; q < n; ++q) {
                uint8_t* lut = out_luts ? out_luts + (first + q) * lut_bytes
                                        : group_tables.data() + q * lut_bytes;
                quantize_lut(u + (first + q) * dim, centroids, code_size, n_subspaces, sub_dim,
                             tables.data(), lut);
                group_luts[q] = lut;
            }
            scan_group(blocks, n_blocks, n_events, code_size, group_luts, n, kernels[n], k,
                       sample_stride, depth_percent, shortlists.data(), &scratch);
            for (int q = 0; q < n; ++q) {
                if (shortlists[q].size() < std::min<int64_t>(k, n_events)) {
                    // the sample's threshold let too few through: this query again, keep all
                    scan_group(blocks, n_blocks, n_events, code_size, &group_luts[q], 1,
                               kernels[1], k, 0, depth_percent, &shortlists[q], &scratch);
                    ++rescanned[thread];
                }
                shortlists[q].finish(out_ids + (first + q) * k, out_values + (first + q) * k);
            }
        }
    };
    std::vector<std::thread> threads;
    for (int t = 1; t < n_threads; ++t) threads.emplace_back(work, t);
    work(0);
    for (auto& thread : threads) thread.join();
    int64_t total = 0;
    for (int64_t r : rescanned) total += r;
    return total;
}

}  // extern "C"
