// The native fused step's C interface (fused_step.cc): seminar.serving.native.fused_step opens
// it through ctypes, the Triton backend (triton_backend.cc) links it.
#pragma once

#include <cstddef>
#include <cstdint>

// What seminar.serving.native.fused_step hands over (its ctypes mirror must match field for
// field). Tensor names come from seminar/contract.py, in the order of kNames below.
struct SeminarFusedStepSpec {
    const char* onnxruntime_library;
    const char* query_encoder_onnx;
    const char* item_encoder_onnx;
    const char* ranking_head_onnx;
    const char* const* tensor_names;  // kNames order
    int64_t query_len;                // T
    int64_t text_dim;                 // F
    int64_t dim;                      // D
    int64_t heads;                    // H
    int64_t k;                        // K
    int64_t rerank;                   // shortlist = rerank * K
    float alpha;
    const float* gsu_weight;  // (D, H, D)
    const float* gsu_bias;    // (H, D) or null
    const float* rotation;    // (D, D) or null: the PQ space is R u
    const float* centroids;   // (code_size, sub_dim, 16), the kernel's layout
    int64_t code_size;
    int64_t n_subspaces;
    int64_t sub_dim;
    int64_t sample_stride;
    int64_t depth_percent;
    int64_t n_users;
    const int64_t* offsets;        // (U + 1,)
    const int32_t* event_item;     // (N,)
    const int32_t* event_query;    // (N,)
    const int64_t* block_offsets;  // (U + 1,)
    const uint8_t* blocks;         // (n_blocks, 16 * code_size)
    const float* item_table;       // (item_rows, D): the item modalities summed
    int64_t item_rows;
    const float* query_table;  // (query_rows, D) or null
    int64_t query_rows;
    // the features step's maps: external id of user index u / of item index i + 2, ascending
    const int64_t* user_ids;
    int64_t user_id_count;
    const int64_t* item_ids;
    int64_t item_id_count;
};

extern "C" {
// The step, or null with the reason in `error`.
void* seminar_fused_step_open(const SeminarFusedStepSpec* spec, char* error, size_t error_size);
// scores (n,) of n mapped rows. 0 on success; 1 for a bad row (the request's fault), 2 for any
// other failure; the reason in `error` either way.
int seminar_fused_step_score(void* step, int64_t n, const int64_t* user_index,
                             const int64_t* item_index, const int64_t* query_tokens,
                             const float* query_text_emb, float* scores, char* error,
                             size_t error_size);
// scores (n,) of n rows with an empty query, from the ensemble's user_id and item_id (the
// features step in C++ too); the same return codes.
int seminar_fused_step_score_ids(void* step, int64_t n, const int64_t* user_id,
                                 const int64_t* item_id, float* scores, char* error,
                                 size_t error_size);
// Seconds the last successful call spent retrieving (per user: the top-K and the gather).
double seminar_fused_step_last_topk_seconds(void* step);
void seminar_fused_step_close(void* step);
}

constexpr int kFusedStepBadRequest = 1, kFusedStepFailed = 2;
