// The PQ kernel's C interface (fused_scan.cpp, where each function's contract is written out):
// seminar.pq.fused_scan calls it through ctypes, serving/native/fused_step.cc links it.
#pragma once

#include <cstdint>

extern "C" {
int seminar_fused_scan_supported();
void seminar_fused_scan_avx2_only(int enabled);
int64_t seminar_fused_scan_topk(const uint8_t* blocks, int64_t n_blocks, int64_t n_events,
                                int code_size, const float* u, const float* centroids,
                                int n_subspaces, int sub_dim, int64_t n_queries, int64_t k,
                                int64_t sample_stride, int64_t depth_percent, int n_threads,
                                int64_t* out_ids, uint16_t* out_values, uint8_t* out_luts,
                                const float* exact_u, const int64_t* item_index,
                                const int64_t* query_index, const float* item_table,
                                const float* query_table, int dim, int64_t k_final,
                                int64_t* final_ids, float* out_embeddings, int64_t heads);
int64_t seminar_exact_topk(const float* u, int64_t n_queries, int64_t n_events,
                           const int64_t* item_index, const int64_t* query_index,
                           const float* item_table, const float* query_table, int dim,
                           int64_t k_final, int64_t* final_ids, float* out_embeddings);
}
