// Fast-scan ADC with the shortlist collection fused into the scan (seminar.pq.fused_scan).
//
// Codes are in faiss's IndexPQFastScan block layout (bbs 32, seminar.pq.faiss_scan.pack_fastscan):
// a block of 32 events holds 16 bytes per sub-quantizer, byte j = codes of events PERM0[j] (low
// nibble) and PERM0[j] + 16 (high nibble). Each query's look-up tables are built and quantized
// to uint8 here (one scale per query, as faiss does); a score is the uint16 sum of one entry per
// sub-quantizer, higher is better.
//
// Per query: every stride-th block is scanned first and its scores kept, the shortlist threshold
// is read off that sample (a little deeper than the shortlist's expected share of it), and every
// other block is only compared against the threshold in registers: the events that pass are
// appended to a small buffer, cut back to the best k whenever it fills. So the collection costs
// a compare per 16 scores plus the few events that pass. If fewer than k pass (the sample
// misled), the query is scanned again keeping everything: the same answer, twice the time.
// Queries are scored four at a time (the codes are loaded once), with AVX-512BW where the CPU
// has it (four sub-quantizers per shuffle) and AVX2 otherwise.
//
// Built by `make setup` (python -m seminar.pq.fused_scan); without it, or on a CPU without
// AVX2, seminar.pq.fused_scan reports it unavailable and the retriever uses faiss.

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "fused_scan.h"

namespace {

constexpr int kBlock = 32;  // events per fast-scan block
// A shortlist whose values span more than this is selected by nth_element, not by a count.
constexpr int kMaxCounted = 1 << 14;

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
    // room for 4k entries and one more block's 32 past them
    explicit Shortlist(int64_t k) : k_(k), entries_(4 * k + kBlock) {}

    uint16_t floor() const { return floor_; }  // the least value that may still enter

    void set_floor(uint16_t value) { floor_ = value; }

    __attribute__((always_inline)) void add(uint16_t value, int32_t id) {
        entries_[size_++] = entry(value, id);
        if (size_ >= 4 * k_) shrink();
    }

    // Where up to 32 entries of one block may be written, then `added` says how many were.
    Entry* tail() { return entries_.data() + size_; }
    __attribute__((always_inline)) void added(int64_t count) {
        size_ += count;
        if (size_ >= 4 * k_) shrink();
    }

    int64_t size() const { return size_; }

    void clear() {
        size_ = 0;
        floor_ = 0;
    }

    // The best min(k, size) entries (in no particular order: the rerank orders them). A count
    // of the values finds the k-th value; only the entries tied at it need ordering (by id).
    void finish(int64_t* ids, uint16_t* values, std::vector<uint32_t>* counts,
                std::vector<Entry>* tied) {
        const int64_t n = std::min<int64_t>(k_, size_);
        if (n < size_) select(counts, tied);
        for (int64_t i = 0; i < k_; ++i) {
            ids[i] = i < n ? id_of(entries_[i]) : -1;
            values[i] = i < n ? value_of(entries_[i]) : 0;
        }
    }

  private:
    // Reorder the entries so that the first k are the best k.
    void select(std::vector<uint32_t>* counts, std::vector<Entry>* tied) {
        Entry* begin = entries_.data();
        Entry* end = begin + size_;
        uint16_t low = UINT16_MAX, high = 0;
        for (const Entry* e = begin; e != end; ++e) {
            low = std::min(low, value_of(*e));
            high = std::max(high, value_of(*e));
        }
        if (high - low >= kMaxCounted) {
            std::nth_element(begin, begin + (k_ - 1), end, std::greater<Entry>());
            return;
        }
        counts->assign(high - low + 1, 0);
        for (const Entry* e = begin; e != end; ++e) ++(*counts)[value_of(*e) - low];
        int64_t above = 0;
        int cut = high - low;
        while (above + (*counts)[cut] < k_) above += (*counts)[cut--];
        const uint16_t kth = static_cast<uint16_t>(low + cut);
        // without branches (whether an entry is above the k-th value is a coin flip here): every
        // entry is written to both places, and the count of each advances only where it belongs
        tied->resize(size_);
        Entry* tie = tied->data();
        int64_t kept = 0, n_tied = 0;
        for (const Entry* e = begin; e != end; ++e) {
            const Entry x = *e;
            begin[kept] = x;  // kept <= the entry's own index: nothing unread is overwritten
            kept += value_of(x) > kth;
            tie[n_tied] = x;
            n_tied += value_of(x) == kth;
        }
        tied->resize(n_tied);
        const int64_t need = k_ - above;
        // equal values: the larger key is the lower id
        std::nth_element(tied->begin(), tied->begin() + (need - 1), tied->end(),
                         std::greater<Entry>());
        std::copy(tied->begin(), tied->begin() + need, begin + kept);
    }

    void shrink() {
        Entry* begin = entries_.data();
        std::nth_element(begin, begin + (k_ - 1), begin + size_, std::greater<Entry>());
        const uint16_t kth = value_of(begin[k_ - 1]);
        size_ = k_;
        // later events have larger ids, so only a strictly higher value beats the k-th
        if (kth < UINT16_MAX) floor_ = std::max<uint16_t>(floor_, kth + 1);
    }

    int64_t k_;
    int64_t size_ = 0;
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

// The same with AVX-512: the passing entries are compress-stored, without a branch per event.
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline void collect_wide(
    __m256i scores, int32_t first_id, int64_t n_events, Shortlist* shortlist) {
    const __m256i floor = _mm256_set1_epi16(static_cast<int16_t>(shortlist->floor()));
    __mmask16 pass = _mm256_cmpge_epu16_mask(scores, floor);
    if (first_id + 16 > n_events)  // padding events past the end never enter
        pass &= static_cast<__mmask16>((1u << std::max<int64_t>(n_events - first_id, 0)) - 1);
    if (!pass) return;
    const __m512i lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    Entry* out = shortlist->tail();
    int64_t count = 0;
    for (int half = 0; half < 2; ++half) {
        const __mmask8 take = static_cast<__mmask8>(pass >> (8 * half));
        const __m128i part = half ? _mm256_extracti128_si256(scores, 1)
                                  : _mm256_castsi256_si128(scores);
        // key = value << 32 | (UINT32_MAX - id), as entry()
        const __m512i inverted_ids = _mm512_sub_epi64(
            _mm512_set1_epi64(static_cast<int64_t>(UINT32_MAX) - (first_id + 8 * half)), lanes);
        const __m512i keys =
            _mm512_or_si512(_mm512_slli_epi64(_mm512_cvtepu16_epi64(part), 32), inverted_ids);
        // compressed in a register and stored whole: the entries past the taken ones land in
        // the shortlist's spare room (kBlock past 4k) and are overwritten by the next
        _mm512_storeu_si512(out + count, _mm512_maskz_compress_epi64(take, keys));
        count += __builtin_popcount(take);
    }
    shortlist->added(count);
}

// One instruction set's kernels for a group of NQ queries: the 32 scores of a block, and the
// same scores collected straight into the shortlists (scores and compares inlined together).
using BlockScores = void (*)(const uint8_t*, const uint8_t* const*, int, __m256i*, __m256i*);
using BlockCollect = void (*)(const uint8_t*, const uint8_t* const*, int, int32_t, int64_t,
                              Shortlist*);
using StoredCollect = void (*)(const uint16_t*, int32_t, int64_t, Shortlist*);

struct Kernels {
    BlockScores scores;
    BlockCollect collect_block;
    StoredCollect collect_stored;  // one query's 32 stored scores of a block
};

template <int NQ>
__attribute__((target("avx2"))) void collect_block_avx2(const uint8_t* codes,
                                                        const uint8_t* const* luts, int code_size,
                                                        int32_t first, int64_t n_events,
                                                        Shortlist* shortlists) {
    __m256i low[NQ], high[NQ];
    block_scores_avx2<NQ>(codes, luts, code_size, low, high);
    for (int q = 0; q < NQ; ++q) {
        collect(low[q], first, n_events, &shortlists[q]);
        collect(high[q], first + 16, n_events, &shortlists[q]);
    }
}

template <int NQ>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void collect_block_avx512(
    const uint8_t* codes, const uint8_t* const* luts, int code_size, int32_t first,
    int64_t n_events, Shortlist* shortlists) {
    __m256i low[NQ], high[NQ];
    block_scores_avx512<NQ>(codes, luts, code_size, low, high);
    for (int q = 0; q < NQ; ++q) {
        collect_wide(low[q], first, n_events, &shortlists[q]);
        collect_wide(high[q], first + 16, n_events, &shortlists[q]);
    }
}

__attribute__((target("avx2"))) void collect_stored_avx2(const uint16_t* values, int32_t first,
                                                         int64_t n_events, Shortlist* shortlist) {
    const __m256i* stored = reinterpret_cast<const __m256i*>(values);
    collect(_mm256_loadu_si256(stored), first, n_events, shortlist);
    collect(_mm256_loadu_si256(stored + 1), first + 16, n_events, shortlist);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) void collect_stored_avx512(
    const uint16_t* values, int32_t first, int64_t n_events, Shortlist* shortlist) {
    const __m256i* stored = reinterpret_cast<const __m256i*>(values);
    collect_wide(_mm256_loadu_si256(stored), first, n_events, shortlist);
    collect_wide(_mm256_loadu_si256(stored + 1), first + 16, n_events, shortlist);
}

constexpr int kGroup = 4;  // queries scored per pass over a block: codes loaded and split once

template <int NQ>
Kernels pick_kernels(bool wide) {
    if (wide) return {block_scores_avx512<NQ>, collect_block_avx512<NQ>, collect_stored_avx512};
    return {block_scores_avx2<NQ>, collect_block_avx2<NQ>, collect_stored_avx2};
}

struct Scratch {
    std::vector<uint16_t> sample[kGroup];  // the sampled blocks' scores, block order
    std::vector<uint32_t> counts;          // one query's sample histogram, then its shortlist's
    std::vector<Entry> tied;               // the shortlist's entries at its k-th value
};

// The quantized look-up tables of one query: lut[c][j] ~ scale * (<u_s, centroid[c][j]> - min_j)
// for sub-quantizer c over sub-space s = c % n_subspaces, with one scale per query such that the
// widest table spans [0, 255] (faiss's fast-scan quantization for inner products).
// centroids (code_size, sub_dim, 16) float32; u (n_subspaces * sub_dim,) float32.
__attribute__((target("avx2,fma"))) inline float horizontal(__m256 v, bool take_min) {
    __m128 half = take_min ? _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1))
                           : _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    __m128 pair = _mm_movehl_ps(half, half);
    half = take_min ? _mm_min_ps(half, pair) : _mm_max_ps(half, pair);
    pair = _mm_shuffle_ps(half, half, 1);
    half = take_min ? _mm_min_ss(half, pair) : _mm_max_ss(half, pair);
    return _mm_cvtss_f32(half);
}

__attribute__((target("avx2,fma"))) void quantize_lut(
    const float* __restrict u, const float* __restrict centroids, int code_size,
    int n_subspaces, int sub_dim, float* __restrict scratch, uint8_t* __restrict lut) {
    float span = 0.0f;
    for (int c = 0; c < code_size; ++c) {
        const float* part = u + (c % n_subspaces) * sub_dim;
        __m256 first = _mm256_setzero_ps(), second = _mm256_setzero_ps();
        for (int t = 0; t < sub_dim; ++t) {
            const float* row = centroids + (static_cast<int64_t>(c) * sub_dim + t) * 16;
            const __m256 weight = _mm256_set1_ps(part[t]);
            first = _mm256_fmadd_ps(weight, _mm256_loadu_ps(row), first);
            second = _mm256_fmadd_ps(weight, _mm256_loadu_ps(row + 8), second);
        }
        const float low = horizontal(_mm256_min_ps(first, second), true);
        const float high = horizontal(_mm256_max_ps(first, second), false);
        const __m256 offset = _mm256_set1_ps(low);
        _mm256_storeu_ps(scratch + 16 * c, _mm256_sub_ps(first, offset));
        _mm256_storeu_ps(scratch + 16 * c + 8, _mm256_sub_ps(second, offset));
        span = std::max(span, high - low);
    }
    // round half up: the values are >= 0, so truncating x + 0.5 is floor(x + 0.5)
    const __m256 scale = _mm256_set1_ps(span > 0.0f ? 255.0f / span : 0.0f);
    const __m256 half = _mm256_set1_ps(0.5f);
    const __m256i top = _mm256_set1_epi32(255);
    for (int i = 0; i < 16 * code_size; i += 8) {
        const __m256 scaled = _mm256_fmadd_ps(_mm256_loadu_ps(scratch + i), scale, half);
        const __m256i level = _mm256_min_epi32(_mm256_cvttps_epi32(scaled), top);
        alignas(32) int32_t levels[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(levels), level);
        for (int j = 0; j < 8; ++j) lut[i + j] = static_cast<uint8_t>(levels[j]);
    }
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
    const uint8_t* const* luts, int n, const Kernels& kernels, int64_t k, int64_t stride,
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
            kernels.scores(blocks + b * block_bytes, luts, code_size, low, high);
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
            for (int64_t b = 0, i = 0; b < n_blocks; b += stride, i += kBlock)
                kernels.collect_stored(sample.data() + i, static_cast<int32_t>(b * kBlock),
                                       n_events, &shortlists[q]);
        }
    }
    // 2. every other block: compare in registers, append what passes
    for (int64_t b = 0, phase = 0; b < n_blocks; ++b, ++phase) {
        if (phase == stride) phase = 0;
        if (stride > 0 && phase == 0) continue;  // b % stride == 0, without a division
        kernels.collect_block(blocks + b * block_bytes, luts, code_size,
                              static_cast<int32_t>(b * kBlock), n_events, shortlists);
    }
}

// The exact tables a shortlist is reranked against: event e of the sequence is the pair
// (item_table[item_index[e]], query_table[query_index[e]]), its exact score <u, item + query>.
struct ExactTables {
    const int64_t* item_index;
    const int64_t* query_index;  // null: no query table
    const float* item_table;
    const float* query_table;
    int dim;
};

// <u, item + query> of one event: the two rows are summed before the product (the vector the
// gather writes), one horizontal sum per event.
__attribute__((target("avx2,fma"))) inline float exact_score(const float* u, const float* item,
                                                             const float* query, int dim) {
    __m256 sum = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= dim; i += 8) {
        __m256 row = _mm256_loadu_ps(item + i);
        if (query) row = _mm256_add_ps(row, _mm256_loadu_ps(query + i));
        sum = _mm256_fmadd_ps(_mm256_loadu_ps(u + i), row, sum);
    }
    __m128 half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    half = _mm_add_ps(half, _mm_movehl_ps(half, half));
    half = _mm_add_ss(half, _mm_shuffle_ps(half, half, 1));
    float total = _mm_cvtss_f32(half);
    for (; i < dim; ++i) total += u[i] * (item[i] + (query ? query[i] : 0.0f));
    return total;
}

// The best k_final of one query's shortlist ids (n, -1 past its end) by exact score, best
// first, ties to the earlier event; -1 past the end. The rows are fetched in a first pass
// (their addresses, then a prefetch a few events ahead of the scoring), since a row fetch from
// a table larger than the cache, not the product, is what a score costs. A ranking key packs
// the score's order-preserving bits above the inverted id (as Entry), so the selection
// compares integers. With out_embeddings the winners' exact vectors are written too
// (item row + query row, the same float32 sum as the retriever's torch gather; zero past the
// end), while their rows are still in the cache.
constexpr int kPrefetchAhead = 8;  // events between a row's prefetch and its score

inline uint64_t rank_key(float score, int64_t id) {
    uint32_t bits;
    const float positive_zero = score + 0.0f;  // -0 and +0 rank alike, as the float compare
    std::memcpy(&bits, &positive_zero, sizeof bits);
    bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return (static_cast<uint64_t>(bits) << 32) | (UINT32_MAX - static_cast<uint32_t>(id));
}

inline int64_t key_id(uint64_t key) {
    return static_cast<int64_t>(UINT32_MAX - static_cast<uint32_t>(key));
}

inline void prefetch_row(const float* row, int dim) {
    const char* bytes = reinterpret_cast<const char*>(row);
    for (int64_t at = 0; at < static_cast<int64_t>(dim) * 4; at += 64)
        __builtin_prefetch(bytes + at);
}

struct RerankScratch {
    std::vector<const float*> items, queries;  // the shortlist's rows
    std::vector<uint64_t> keys;
};

__attribute__((target("avx2,fma"))) void rerank(const ExactTables& tables, const float* u,
                                                const int64_t* ids, int64_t n, int64_t k_final,
                                                RerankScratch* scratch, int64_t* out,
                                                float* out_embeddings) {
    const int dim = tables.dim;
    int64_t m = 0;
    while (m < n && ids[m] >= 0) ++m;
    scratch->items.resize(m);
    scratch->queries.resize(m);
    scratch->keys.resize(m);
    const float** items = scratch->items.data();
    const float** queries = scratch->queries.data();
    for (int64_t i = 0; i < m; ++i) {
        items[i] = tables.item_table + tables.item_index[ids[i]] * dim;
        queries[i] = tables.query_index ? tables.query_table + tables.query_index[ids[i]] * dim
                                        : nullptr;
    }
    for (int64_t i = 0; i < std::min<int64_t>(kPrefetchAhead, m); ++i) {
        prefetch_row(items[i], dim);
        if (queries[i]) prefetch_row(queries[i], dim);
    }
    uint64_t* keys = scratch->keys.data();
    for (int64_t i = 0; i < m; ++i) {
        if (i + kPrefetchAhead < m) {
            prefetch_row(items[i + kPrefetchAhead], dim);
            if (queries[i + kPrefetchAhead]) prefetch_row(queries[i + kPrefetchAhead], dim);
        }
        keys[i] = rank_key(exact_score(u, items[i], queries[i], dim), ids[i]);
    }
    const int64_t kept = std::min<int64_t>(k_final, m);
    if (kept > 0 && kept < m)
        std::nth_element(keys, keys + (kept - 1), keys + m, std::greater<uint64_t>());
    std::sort(keys, keys + kept, std::greater<uint64_t>());
    for (int64_t i = 0; i < k_final; ++i) out[i] = i < kept ? key_id(keys[i]) : -1;
    if (!out_embeddings) return;
    for (int64_t i = 0; i < k_final; ++i, out_embeddings += dim) {
        if (i >= kept) {
            std::fill(out_embeddings, out_embeddings + dim, 0.0f);
            continue;
        }
        const int64_t e = out[i];
        const float* item = tables.item_table + tables.item_index[e] * dim;
        const float* query =
            tables.query_index ? tables.query_table + tables.query_index[e] * dim : nullptr;
        int j = 0;
        for (; j + 8 <= dim; j += 8) {
            __m256 row = _mm256_loadu_ps(item + j);
            if (query) row = _mm256_add_ps(row, _mm256_loadu_ps(query + j));
            _mm256_storeu_ps(out_embeddings + j, row);
        }
        for (; j < dim; ++j) out_embeddings[j] = item[j] + (query ? query[j] : 0.0f);
    }
}

}  // namespace

extern "C" {

int seminar_fused_scan_supported() { return __builtin_cpu_supports("avx2") ? 1 : 0; }

// Tests: 1 keeps the AVX2 kernels even where the CPU has AVX-512 (both must answer alike).
static int avx2_only = 0;
void seminar_fused_scan_avx2_only(int enabled) { avx2_only = enabled; }

// blocks (n_blocks, 16 * code_size) uint8; u (n_queries, n_subspaces * sub_dim) float32, the
// queries; centroids (code_size, sub_dim, 16) float32, sub-quantizer c over sub-space
// c % n_subspaces; out_ids (n_queries, k) int64, the best k (any order; -1 past the end),
// out_values (n_queries, k) uint16 their quantized scores; out_luts (n_queries, code_size, 16)
// uint8 or null. With final_ids (n_queries, k_final) int64, each shortlist is reranked by exact
// score against ExactTables (exact_u (n_queries, dim): the queries before any rotation) and the
// best k_final written there, best first (-1 past the end); with out_embeddings
// (n_queries, k_final, dim) float32 also their exact vectors (zero past the end).
// sample_stride 0: no sample, the shortlist floor starts at 0. heads > 1: the queries are
// (n_queries / heads, heads) row-major, (target, head), and are taken head by head: the
// shortlists of one head's targets overlap, so the rows a query's rerank fetches are mostly
// still cached from the queries before it (the outputs keep the queries' order). Returns the
// number of queries scanned a second time (their sample's threshold let fewer than k events
// through), or -1 for arguments it cannot take.
int64_t seminar_fused_scan_topk(const uint8_t* blocks, int64_t n_blocks, int64_t n_events,
                                int code_size, const float* u, const float* centroids,
                                int n_subspaces, int sub_dim, int64_t n_queries, int64_t k,
                                int64_t sample_stride, int64_t depth_percent, int n_threads,
                                int64_t* out_ids, uint16_t* out_values, uint8_t* out_luts,
                                const float* exact_u, const int64_t* item_index,
                                const int64_t* query_index, const float* item_table,
                                const float* query_table, int dim, int64_t k_final,
                                int64_t* final_ids, float* out_embeddings, int64_t heads) {
    if (code_size <= 0 || code_size % 2 || code_size > 256 || k <= 0 || n_events < 0 ||
        heads <= 0 || n_queries % heads ||
        n_events > n_blocks * kBlock || n_events > INT32_MAX || n_subspaces <= 0 ||
        sub_dim <= 0 || (final_ids && (!exact_u || !item_index || !item_table || dim <= 0 ||
                                        k_final <= 0 || !query_index != !query_table)) ||
        (out_embeddings && !final_ids))
        return -1;
    const ExactTables tables{item_index, query_index, item_table, query_table, dim};
    const bool wide = !avx2_only && code_size % 4 == 0 && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
    const Kernels kernels[kGroup + 1] = {{}, pick_kernels<1>(wide), pick_kernels<2>(wide),
                                         pick_kernels<3>(wide), pick_kernels<4>(wide)};
    const int64_t n_groups = (n_queries + kGroup - 1) / kGroup;
    n_threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(n_threads, n_groups)));
    std::vector<int64_t> rescanned(n_threads, 0);
    std::atomic<int64_t> next_group{0};
    const int64_t lut_bytes = 16 * static_cast<int64_t>(code_size);
    const int64_t query_dim = static_cast<int64_t>(n_subspaces) * sub_dim;
    auto work = [&](int thread) {
        std::vector<Shortlist> shortlists(kGroup, Shortlist(k));
        Scratch scratch;
        RerankScratch rerank_scratch;
        std::vector<float> float_luts(lut_bytes);
        std::vector<uint8_t> group_tables(kGroup * lut_bytes);
        // groups are handed out one at a time: a thread the OS holds back takes fewer
        for (int64_t g = next_group++; g < n_groups; g = next_group++) {
            const int64_t first = g * kGroup;
            const int n = static_cast<int>(std::min<int64_t>(kGroup, n_queries - first));
            int64_t at[kGroup];  // the group's queries: head-major position -> query index
            for (int q = 0; q < n; ++q) {
                const int64_t position = first + q, targets = n_queries / heads;
                at[q] = (position % targets) * heads + position / targets;
            }
            const uint8_t* group_luts[kGroup];
            for (int q = 0; q < n; ++q) {
                uint8_t* lut = out_luts ? out_luts + at[q] * lut_bytes
                                        : group_tables.data() + q * lut_bytes;
                quantize_lut(u + at[q] * query_dim, centroids, code_size, n_subspaces, sub_dim,
                             float_luts.data(), lut);
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
                int64_t* ids = out_ids + at[q] * k;
                shortlists[q].finish(ids, out_values + at[q] * k, &scratch.counts,
                                     &scratch.tied);
                if (final_ids)
                    rerank(tables, exact_u + at[q] * dim, ids, k, k_final, &rerank_scratch,
                           final_ids + at[q] * k_final,
                           out_embeddings ? out_embeddings + at[q] * k_final * dim
                                          : nullptr);
            }
        }
    };
    // OpenMP, and torch's runtime of it: libgomp.so.1 resolves to the copy torch loaded, so the
    // kernel runs on torch's worker threads (a separate pool would compete with them for the
    // cores while they spin-wait after torch's last parallel region).
#pragma omp parallel num_threads(n_threads)
    work(omp_get_thread_num());
    int64_t total = 0;
    for (int64_t r : rescanned) total += r;
    return total;
}

// The exact top-k_final of every event of one sequence (n_events of them, no scan): each query
// u (n_queries, dim) ranks all events by exact score as the rerank ranks a shortlist (best
// first, ties to the earlier event, -1 / zero past the end). For a sequence no longer than the
// shortlist, where the scan would keep every event anyway. Returns 0, or -1 for arguments it
// cannot take.
int64_t seminar_exact_topk(const float* u, int64_t n_queries, int64_t n_events,
                           const int64_t* item_index, const int64_t* query_index,
                           const float* item_table, const float* query_table, int dim,
                           int64_t k_final, int64_t* final_ids, float* out_embeddings) {
    if (!u || n_queries < 0 || n_events < 0 || n_events > INT32_MAX || dim <= 0 ||
        k_final <= 0 || !final_ids || (n_events && (!item_index || !item_table)) ||
        !query_index != !query_table)
        return -1;
    const ExactTables tables{item_index, query_index, item_table, query_table, dim};
    std::vector<int64_t> ids(n_events);
    for (int64_t e = 0; e < n_events; ++e) ids[e] = e;
    RerankScratch scratch;
    for (int64_t q = 0; q < n_queries; ++q)
        rerank(tables, u + q * dim, ids.data(), n_events, k_final, &scratch,
               final_ids + q * k_final, out_embeddings ? out_embeddings + q * k_final * dim : nullptr);
    return 0;
}

}  // extern "C"
