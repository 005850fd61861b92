// The fused step's computation in C++ (seminar.serving.native): mapped rows -> scores, the same
// chain seminar.serving.inprocess.InProcessPipeline.score_rows runs in Python:
//
//   query_encoder(query_tokens, query_text_emb) -> query_emb        ONNX Runtime
//   item_encoder(item_index)                     -> item_emb         ONNX Runtime
//   x_t = alpha * query_emb + (1 - alpha) * item_emb, u = GSU projection of x_t (H heads)
//   per user: top-K events by PQ shortlist + exact rerank (seminar/pq/fused_scan.cpp), or every
//   event reranked exactly when the history is no longer than the shortlist
//   ranking_head(query_emb, item_emb, topk_emb, topk_mask)           -> score  ONNX Runtime
//
// No Python and no GIL on this path, so a Triton C++ backend and an in-process worker run the
// very same instructions. ONNX Runtime is the onnxruntime wheel's own libonnxruntime, opened by
// path (the wheel names it by version, so nothing can link it by name); its C API header is
// Debian's libonnxruntime-dev, fetched by the build (seminar.serving.native.fused_step).
//
// The arrays (PQ store, tables, projection) belong to the caller, who keeps them alive and
// unchanged while the step is open. Every failure is a message in the caller's buffer and a
// nonzero return, never an exception across the C boundary.

#define ORT_API_MANUAL_INIT
#include <dlfcn.h>
#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fused_scan.h"  // seminar/pq: the PQ kernel
#include "fused_step.h"


namespace {

enum Name {
    kQueryTokens, kQueryTextEmb, kQueryEmb, kItemIndex, kItemEmb, kTopkEmb, kTopkMask, kScore,
    kNameCount
};

// seminar/contract.py's index conventions
constexpr int64_t kOovItemIndex = 1, kFirstItemIndex = 2, kPadTokenId = 0;

void put_error(char* buffer, size_t size, const std::string& message) {
    if (buffer && size) std::snprintf(buffer, size, "%s", message.c_str());
}

struct Graph {
    std::unique_ptr<Ort::Session> session;
    std::vector<const char*> inputs, outputs;
};

struct FusedStep {
    SeminarFusedStepSpec spec{};
    std::vector<std::string> names;
    Ort::Env env{nullptr};
    Ort::MemoryInfo cpu{nullptr};
    Graph query_encoder, item_encoder, ranking_head;
    // per-call scratch, kept between calls (one caller at a time)
    std::vector<float> x, u, u_pq, topk_emb, topk_mask, group_u, group_u_pq, group_emb;
    std::vector<int64_t> group_rows, final_ids, shortlist_ids, event_item, event_query;
    std::vector<uint16_t> shortlist_values;
    double last_topk_seconds = 0.0;  // the last call's retrieval (top-K + gather), for metrics
};

const OrtApi* open_onnxruntime(const char* path, std::string* error) {
    void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        *error = std::string("cannot open ONNX Runtime: ") + dlerror();
        return nullptr;
    }
    using GetApiBase = const OrtApiBase* (*)();
    auto get_api_base = reinterpret_cast<GetApiBase>(dlsym(library, "OrtGetApiBase"));
    if (!get_api_base) {
        *error = std::string(path) + " has no OrtGetApiBase";
        return nullptr;
    }
    const OrtApi* api = get_api_base()->GetApi(ORT_API_VERSION);
    if (!api)
        *error = std::string("ONNX Runtime ") + get_api_base()->GetVersionString() +
                 " does not offer C API version " + std::to_string(ORT_API_VERSION);
    return api;
}

Graph open_graph(FusedStep* step, const char* path, std::vector<Name> inputs,
                 std::vector<Name> outputs) {
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(1);  // one step per core: threads would fight the others
    options.SetInterOpNumThreads(1);
    Graph graph;
    graph.session = std::make_unique<Ort::Session>(step->env, path, options);
    Ort::AllocatorWithDefaultOptions allocator;
    auto check = [&](size_t count, auto name_at, const std::vector<Name>& want, const char* kind) {
        std::vector<std::string> have;
        for (size_t i = 0; i < count; ++i) have.push_back(name_at(i, allocator).get());
        std::vector<std::string> expected;
        for (Name n : want) expected.push_back(step->names[n]);
        auto sorted = [](std::vector<std::string> v) { std::sort(v.begin(), v.end()); return v; };
        if (sorted(have) != sorted(expected)) {
            std::string message = std::string(path) + ": graph " + kind + "s are";
            for (auto& h : have) message += " " + h;
            message += ", expected";
            for (auto& e : expected) message += " " + e;
            throw std::runtime_error(message);
        }
    };
    check(graph.session->GetInputCount(),
          [&](size_t i, auto& a) { return graph.session->GetInputNameAllocated(i, a); }, inputs,
          "input");
    check(graph.session->GetOutputCount(),
          [&](size_t i, auto& a) { return graph.session->GetOutputNameAllocated(i, a); }, outputs,
          "output");
    for (Name n : inputs) graph.inputs.push_back(step->names[n].c_str());
    for (Name n : outputs) graph.outputs.push_back(step->names[n].c_str());
    return graph;
}

template <typename T>
Ort::Value tensor(FusedStep* step, const T* data, std::vector<int64_t> shape) {
    size_t count = 1;
    for (int64_t d : shape) count *= static_cast<size_t>(d);
    return Ort::Value::CreateTensor<T>(step->cpu, const_cast<T*>(data), count, shape.data(),
                                       shape.size());
}

// One graph run; its single output copied to `out` (count floats expected).
void run_graph(Graph& graph, std::vector<Ort::Value>& inputs, float* out, size_t count) {
    auto outputs = graph.session->Run(Ort::RunOptions{nullptr}, graph.inputs.data(), inputs.data(),
                                      inputs.size(), graph.outputs.data(), 1);
    auto info = outputs[0].GetTensorTypeAndShapeInfo();
    if (info.GetElementCount() != count)
        throw std::runtime_error(std::string(graph.outputs[0]) + " has " +
                                 std::to_string(info.GetElementCount()) + " values, expected " +
                                 std::to_string(count));
    std::memcpy(out, outputs[0].GetTensorData<float>(), count * sizeof(float));
}

// out (n, cols) = a (n, inner) @ b (inner, cols), in float32 like torch's GEMM (the order of the
// sums may differ from it in the last bit).
void matmul(const float* a, const float* b, float* out, int64_t n, int64_t inner, int64_t cols) {
    std::fill(out, out + n * cols, 0.0f);
    for (int64_t r = 0; r < n; ++r)
        for (int64_t i = 0; i < inner; ++i) {
            const float value = a[r * inner + i];
            const float* row = b + i * cols;
            float* target = out + r * cols;
            for (int64_t c = 0; c < cols; ++c) target[c] += value * row[c];
        }
}

// Every stored event names a row of the tables (checked once at open, so that a request
// never reads past them).
void check_store(const SeminarFusedStepSpec& s) {
    const int64_t n_events = s.offsets[s.n_users];
    for (int64_t e = 0; e < n_events; ++e) {
        const bool bad_item = s.event_item[e] < 0 || s.event_item[e] >= s.item_rows;
        const bool bad_query =
            s.query_table && (s.event_query[e] < 0 || s.event_query[e] >= s.query_rows);
        if (bad_item || bad_query)
            throw std::runtime_error("the sequence store's event " + std::to_string(e) +
                                     " names a table row out of range");
    }
}

// topk_emb / topk_mask of the rows of one user, whose GSU vectors are group_u.
void retrieve_user(FusedStep* step, int64_t user) {
    const auto& s = step->spec;
    const int64_t b = static_cast<int64_t>(step->group_rows.size());
    const int64_t queries = b * s.heads, slots = s.heads * s.k, width = slots * s.dim;
    const int64_t first = user < 0 ? 0 : s.offsets[user];
    const int64_t n_events = user < 0 ? 0 : s.offsets[user + 1] - first;
    if (n_events == 0) return;  // cold start or an empty history: the slots stay zero
    step->event_item.assign(s.event_item + first, s.event_item + first + n_events);
    step->event_query.clear();
    if (s.query_table) step->event_query.assign(s.event_query + first, s.event_query + first + n_events);
    const int64_t* query_index = s.query_table ? step->event_query.data() : nullptr;
    step->final_ids.resize(queries * s.k);
    step->group_emb.resize(queries * s.k * s.dim);
    const int64_t shortlist = s.k * s.rerank;
    int64_t done;
    if (s.rerank > 1 && n_events <= shortlist) {
        done = seminar_exact_topk(step->group_u.data(), queries, n_events, step->event_item.data(),
                                  query_index, s.item_table, s.query_table, s.dim, s.k,
                                  step->final_ids.data(), step->group_emb.data());
    } else {
        step->group_u_pq.resize(queries * s.dim);
        if (s.rotation) {  // R u: rows of u times R transposed
            for (int64_t q = 0; q < queries; ++q)
                for (int64_t r = 0; r < s.dim; ++r) {
                    float sum = 0.0f;
                    for (int64_t c = 0; c < s.dim; ++c)
                        sum += step->group_u[q * s.dim + c] * s.rotation[r * s.dim + c];
                    step->group_u_pq[q * s.dim + r] = sum;
                }
        } else {
            step->group_u_pq = step->group_u;
        }
        step->shortlist_ids.resize(queries * shortlist);
        step->shortlist_values.resize(queries * shortlist);
        const int64_t n_blocks = s.block_offsets[user + 1] - s.block_offsets[user];
        done = seminar_fused_scan_topk(
            s.blocks + s.block_offsets[user] * 16 * s.code_size, n_blocks, n_events,
            static_cast<int>(s.code_size), step->group_u_pq.data(), s.centroids,
            static_cast<int>(s.n_subspaces), static_cast<int>(s.sub_dim), queries, shortlist,
            s.sample_stride, s.depth_percent, 1, step->shortlist_ids.data(),
            step->shortlist_values.data(), nullptr, step->group_u.data(), step->event_item.data(),
            query_index, s.item_table, s.query_table, static_cast<int>(s.dim), s.k,
            step->final_ids.data(), step->group_emb.data(), s.heads);
    }
    if (done < 0) throw std::runtime_error("the PQ kernel refused its arguments");
    for (int64_t g = 0; g < b; ++g) {
        const int64_t row = step->group_rows[g];
        std::memcpy(step->topk_emb.data() + row * width, step->group_emb.data() + g * width,
                    width * sizeof(float));
        for (int64_t slot = 0; slot < slots; ++slot)
            step->topk_mask[row * slots + slot] = step->final_ids[g * slots + slot] >= 0 ? 1.0f : 0.0f;
    }
}

void score(FusedStep* step, int64_t n, const int64_t* user_index, const int64_t* item_index,
           const int64_t* query_tokens, const float* query_text_emb, float* scores) {
    const auto& s = step->spec;
    for (int64_t r = 0; r < n; ++r)
        if (user_index[r] < -1 || user_index[r] >= s.n_users)
            throw std::invalid_argument("user_index row " + std::to_string(r) + " is " +
                                        std::to_string(user_index[r]) + ", outside [-1, " +
                                        std::to_string(s.n_users) + ")");
    std::vector<float> query_emb(n * s.dim), item_emb(n * s.dim);
    {
        std::vector<Ort::Value> inputs;
        inputs.push_back(tensor(step, query_tokens, {n, s.query_len}));
        inputs.push_back(tensor(step, query_text_emb, {n, s.text_dim}));
        run_graph(step->query_encoder, inputs, query_emb.data(), n * s.dim);
    }
    {
        std::vector<Ort::Value> inputs;
        inputs.push_back(tensor(step, item_index, {n, 1}));
        run_graph(step->item_encoder, inputs, item_emb.data(), n * s.dim);
    }
    // x_t as SeminarModel.pair forms it, then the GSU projection (D) -> (H, D)
    const float a = s.alpha, b = 1.0f - s.alpha;
    step->x.resize(n * s.dim);
    for (int64_t i = 0; i < n * s.dim; ++i) step->x[i] = a * query_emb[i] + b * item_emb[i];
    const int64_t hd = s.heads * s.dim;
    step->u.resize(n * hd);
    matmul(step->x.data(), s.gsu_weight, step->u.data(), n, s.dim, hd);
    if (s.gsu_bias)
        for (int64_t r = 0; r < n; ++r)
            for (int64_t c = 0; c < hd; ++c) step->u[r * hd + c] += s.gsu_bias[c];
    const int64_t slots = s.heads * s.k;
    step->topk_emb.assign(n * slots * s.dim, 0.0f);
    step->topk_mask.assign(n * slots, 0.0f);
    std::map<int64_t, std::vector<int64_t>> rows_of_user;  // users in ascending order
    for (int64_t r = 0; r < n; ++r) rows_of_user[user_index[r]].push_back(r);
    const auto retrieval_start = std::chrono::steady_clock::now();
    for (auto& [user, rows] : rows_of_user) {
        step->group_rows = rows;
        step->group_u.resize(rows.size() * hd);
        for (size_t g = 0; g < rows.size(); ++g)
            std::memcpy(step->group_u.data() + g * hd, step->u.data() + rows[g] * hd,
                        hd * sizeof(float));
        retrieve_user(step, user);
    }
    step->last_topk_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - retrieval_start).count();
    std::vector<Ort::Value> inputs;
    inputs.push_back(tensor(step, query_emb.data(), {n, s.dim}));
    inputs.push_back(tensor(step, item_emb.data(), {n, s.dim}));
    inputs.push_back(tensor(step, step->topk_emb.data(), {n, s.heads, s.k, s.dim}));
    inputs.push_back(tensor(step, step->topk_mask.data(), {n, s.heads, s.k}));
    run_graph(step->ranking_head, inputs, scores, n);
}

// The features step for rows without a query (seminar.serving.features.FeatureMapper, the same
// rules and messages): a known user id -> its index, unknown -> -1 (cold start); a known item id
// -> its index, unknown -> 1 (OOV); a negative id refuses the rows. Then the rows are scored
// with the padding tokens and the zero text embedding an empty query has.
void score_ids(FusedStep* step, int64_t n, const int64_t* user_id, const int64_t* item_id,
               float* scores) {
    const auto& s = step->spec;
    for (auto [name, ids] : {std::pair{"user_id", user_id}, std::pair{"item_id", item_id}})
        for (int64_t r = 0; r < n; ++r)
            if (ids[r] < 0)
                throw std::invalid_argument(std::string(name) + " must be >= 0, row " +
                                            std::to_string(r) + " has " + std::to_string(ids[r]));
    auto position = [](const int64_t* sorted, int64_t count, int64_t id) -> int64_t {
        const int64_t* at = std::lower_bound(sorted, sorted + count, id);
        return at != sorted + count && *at == id ? at - sorted : -1;
    };
    std::vector<int64_t> user_index(n), item_index(n);
    for (int64_t r = 0; r < n; ++r) {
        user_index[r] = position(s.user_ids, s.user_id_count, user_id[r]);  // -1: cold start
        const int64_t item = position(s.item_ids, s.item_id_count, item_id[r]);
        item_index[r] = item < 0 ? kOovItemIndex : item + kFirstItemIndex;
    }
    std::vector<int64_t> tokens(n * s.query_len, kPadTokenId);
    std::vector<float> text(n * s.text_dim, 0.0f);
    score(step, n, user_index.data(), item_index.data(), tokens.data(), text.data(), scores);
}

// Runs `call`: 0 on success; 1 for a bad row (the request's fault), 2 for any other failure;
// the reason in `error` either way (no exception crosses the C boundary).
template <typename Call>
int guarded(Call call, char* error, size_t error_size) {
    try {
        call();
        return 0;
    } catch (const std::invalid_argument& e) {
        put_error(error, error_size, e.what());
        return kFusedStepBadRequest;
    } catch (const Ort::Exception& e) {
        // ONNX Runtime refuses an index outside its table (an item or token id) with
        // INVALID_ARGUMENT: the request's fault; anything else is the step's
        put_error(error, error_size, e.what());
        return e.GetOrtErrorCode() == ORT_INVALID_ARGUMENT ? kFusedStepBadRequest : kFusedStepFailed;
    } catch (const std::exception& e) {
        put_error(error, error_size, e.what());
        return kFusedStepFailed;
    }
}

}  // namespace

extern "C" {

// The C interface is documented in fused_step.h.

void* seminar_fused_step_open(const SeminarFusedStepSpec* spec, char* error, size_t error_size) {
    std::string message;
    const OrtApi* api = open_onnxruntime(spec->onnxruntime_library, &message);
    if (!api) {
        put_error(error, error_size, message);
        return nullptr;
    }
    Ort::InitApi(api);
    auto step = std::make_unique<FusedStep>();
    step->spec = *spec;
    for (int i = 0; i < kNameCount; ++i) step->names.emplace_back(spec->tensor_names[i]);
    try {
        // FATAL only: every failure comes back to the caller with its message, and a client's
        // bad index must not write to the server's log on every request
        check_store(*spec);
        step->env = Ort::Env(ORT_LOGGING_LEVEL_FATAL, "seminar-fused-step");
        step->cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        step->query_encoder =
            open_graph(step.get(), spec->query_encoder_onnx, {kQueryTokens, kQueryTextEmb}, {kQueryEmb});
        step->item_encoder = open_graph(step.get(), spec->item_encoder_onnx, {kItemIndex}, {kItemEmb});
        step->ranking_head = open_graph(step.get(), spec->ranking_head_onnx,
                                        {kQueryEmb, kItemEmb, kTopkEmb, kTopkMask}, {kScore});
    } catch (const std::exception& e) {
        put_error(error, error_size, e.what());
        return nullptr;
    }
    return step.release();
}

int seminar_fused_step_score(void* handle, int64_t n, const int64_t* user_index,
                             const int64_t* item_index, const int64_t* query_tokens,
                             const float* query_text_emb, float* scores, char* error,
                             size_t error_size) {
    if (n <= 0) return 0;
    auto* step = static_cast<FusedStep*>(handle);
    return guarded(
        [&] { score(step, n, user_index, item_index, query_tokens, query_text_emb, scores); },
        error, error_size);
}

int seminar_fused_step_score_ids(void* handle, int64_t n, const int64_t* user_id,
                                 const int64_t* item_id, float* scores, char* error,
                                 size_t error_size) {
    if (n <= 0) return 0;
    auto* step = static_cast<FusedStep*>(handle);
    return guarded([&] { score_ids(step, n, user_id, item_id, scores); }, error, error_size);
}

double seminar_fused_step_last_topk_seconds(void* handle) {
    return static_cast<FusedStep*>(handle)->last_topk_seconds;
}

void seminar_fused_step_close(void* handle) { delete static_cast<FusedStep*>(handle); }

}  // extern "C"
