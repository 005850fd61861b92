// Triton backend `seminar_native`: the fused step in C++ inside tritonserver, no Python stub and
// no IPC. A model of this backend reads the fused step's arrays from its version folder
// (`fused_step/`, written by seminar.serving.native.fused_step.write_bundle), each file and the
// three ONNX graphs it names checked against their manifests' sha256 first, and serves the
// ensemble's tensors: user_id (B, 1) INT64, query (B, 1) BYTES, item_id (B, 1) INT64 ->
// score (B, 1) FP32.
//
// Every request of a batch is checked on its own (a bad one gets INVALID_ARG with the reason, the
// others are still served), then all accepted rows are scored in one call. The C++ step has no
// query tokenizers yet, so a search (a request with a query) is forwarded whole, inside the
// server, to the model the config's `search_model` parameter names (the Python `pipeline` of
// the same version) and answered with that model's scores or error; without the parameter a
// search gets UNSUPPORTED. Nor does it read the users' online tails: when tritonserver runs
// with an event log (the variable spec.txt's `event_log_env` names), every request is forwarded
// to the search model, which scores the tails, and without one the model refuses to load.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "fused_step.h"
#include "triton_api.h"

namespace {

constexpr const char* kBundleDir = "fused_step";
constexpr const char* kUserId = "user_id";
constexpr const char* kQuery = "query";
constexpr const char* kItemId = "item_id";
constexpr const char* kScore = "score";
constexpr size_t kErrorBytes = 1024;
constexpr const char* kSearchModelParameter = "search_model";

uint64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// A .npy file mapped read-only: its data, dtype string and shape.
struct NpyArray {
    void* mapping = nullptr;
    size_t mapped = 0;
    const char* data = nullptr;
    std::string descr;
    std::vector<int64_t> shape;

    NpyArray() = default;
    NpyArray(const NpyArray&) = delete;
    NpyArray& operator=(const NpyArray&) = delete;
    ~NpyArray() {
        if (mapping) munmap(mapping, mapped);
    }
    int64_t rows() const { return shape.empty() ? 0 : shape[0]; }
};

std::unique_ptr<NpyArray> load_npy(const std::string& path, const std::string& descr,
                                   size_t dims) {
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error("cannot open " + path);
    struct stat info {};
    fstat(fd, &info);
    auto array = std::make_unique<NpyArray>();
    array->mapped = static_cast<size_t>(info.st_size);
    void* mapping = array->mapped ? mmap(nullptr, array->mapped, PROT_READ, MAP_PRIVATE, fd, 0)
                                  : MAP_FAILED;
    close(fd);
    if (mapping == MAP_FAILED) throw std::runtime_error("cannot map " + path);
    array->mapping = mapping;
    const char* bytes = static_cast<const char*>(mapping);
    auto bad = [&](const std::string& why) { return std::runtime_error(path + ": " + why); };
    if (array->mapped < 10 || std::memcmp(bytes, "\x93NUMPY", 6) != 0) throw bad("not a .npy file");
    const int major = bytes[6];
    size_t header_len, at;
    if (major == 1) {
        header_len = static_cast<uint8_t>(bytes[8]) | static_cast<uint8_t>(bytes[9]) << 8;
        at = 10;
    } else {
        if (array->mapped < 12) throw bad("truncated header");
        header_len = 0;
        for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<uint8_t>(bytes[8 + i])) << (8 * i);
        at = 12;
    }
    if (at + header_len > array->mapped) throw bad("truncated header");
    const std::string header(bytes + at, header_len);
    auto field = [&](const std::string& key) {
        size_t where = header.find("'" + key + "':");
        if (where == std::string::npos) throw bad("no " + key + " in the header");
        return header.substr(where + key.size() + 3);
    };
    const std::string descr_field = field("descr");
    array->descr = descr_field.substr(descr_field.find('\'') + 1);
    array->descr = array->descr.substr(0, array->descr.find('\''));
    if (field("fortran_order").find("False") != field("fortran_order").find_first_not_of(' '))
        throw bad("Fortran order is not supported");
    std::string shape = field("shape");
    shape = shape.substr(shape.find('(') + 1, shape.find(')') - shape.find('(') - 1);
    size_t count = 1;
    for (size_t pos = 0; pos < shape.size();) {
        size_t comma = shape.find(',', pos);
        std::string item = shape.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        if (item.find_first_not_of(' ') != std::string::npos) {
            array->shape.push_back(std::stoll(item));
            count *= static_cast<size_t>(array->shape.back());
        }
        if (comma == std::string::npos) break;
        pos = comma + 1;
    }
    if (array->descr != descr) throw bad("dtype " + array->descr + ", expected " + descr);
    if (array->shape.size() != dims)
        throw bad(std::to_string(array->shape.size()) + " dimensions, expected " + std::to_string(dims));
    const size_t item_size = std::stoul(descr.substr(2));
    array->data = bytes + at + header_len;
    if (at + header_len + count * item_size > array->mapped) throw bad("truncated data");
    return array;
}

// SHA-256 (FIPS 180-4) of a file, lowercase hex: what seminar.manifest records for it.
std::string sha256_hex(const std::string& path) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
    auto compress = [&](const unsigned char* block) {
        uint32_t w[64];
        for (int i = 0; i < 16; ++i)
            w[i] = uint32_t(block[4 * i]) << 24 | uint32_t(block[4 * i + 1]) << 16 |
                   uint32_t(block[4 * i + 2]) << 8 | uint32_t(block[4 * i + 3]);
        for (int i = 16; i < 64; ++i) {
            const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
            const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16] + s0 + w[i - 7] + s1;
        }
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], x = h[7];
        for (int i = 0; i < 64; ++i) {
            const uint32_t t1 = x + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
            const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
            x = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += x;
    };
    std::ifstream file(path, std::ios::binary);
    if (!file) throw std::runtime_error("cannot read " + path);
    std::vector<unsigned char> buffer(1 << 16);
    uint64_t total = 0;
    size_t pending = 0;  // bytes of buffer not yet compressed
    while (file) {
        file.read(reinterpret_cast<char*>(buffer.data() + pending), buffer.size() - pending);
        const size_t got = static_cast<size_t>(file.gcount());
        total += got;
        pending += got;
        size_t at = 0;
        for (; at + 64 <= pending; at += 64) compress(buffer.data() + at);
        std::memmove(buffer.data(), buffer.data() + at, pending - at);
        pending -= at;
    }
    unsigned char tail[128] = {};
    std::memcpy(tail, buffer.data(), pending);
    tail[pending] = 0x80;
    const size_t blocks = pending + 9 <= 64 ? 1 : 2;
    const uint64_t bits = total * 8;
    for (int i = 0; i < 8; ++i) tail[blocks * 64 - 1 - i] = static_cast<unsigned char>(bits >> (8 * i));
    for (size_t b = 0; b < blocks; ++b) compress(tail + 64 * b);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (uint32_t word : h)
        for (int shift = 28; shift >= 0; shift -= 4) out += hex[(word >> shift) & 0xf];
    return out;
}

// Check `name` in `folder` against folder/manifest.json (seminar.manifest's format: "files"
// maps each name to its "sha256"); the error names the file that fails.
void verify_file(const std::string& folder, const std::string& name) {
    const std::string manifest_path = folder + "/manifest.json";
    std::ifstream in(manifest_path);
    if (!in) throw std::runtime_error(manifest_path + ": manifest not found");
    const std::string manifest((std::istreambuf_iterator<char>(in)), {});
    const size_t entry = manifest.find("\"" + name + "\": {");
    const size_t field = entry == std::string::npos ? entry : manifest.find("\"sha256\": \"", entry);
    const size_t end = field == std::string::npos ? field : manifest.find('}', entry);
    if (field == std::string::npos || field > end)
        throw std::runtime_error(manifest_path + " lists no sha256 for " + name);
    const std::string want = manifest.substr(field + 11, 64);
    if (sha256_hex(folder + "/" + name) != want)
        throw std::runtime_error(folder + "/" + name + ": sha256 differs from " + manifest_path +
                                 " (a changed or corrupt file)");
}

// The model: its arrays (shared by its instances), the spec every instance opens a step on, and
// where searches go.
struct ModelState {
    std::string search_model;  // empty: searches are refused
    bool forward_all = false;  // an event log is set: the search model scores every request
    int64_t version = 0;
    TRITONSERVER_Server* server = nullptr;
    TRITONSERVER_ResponseAllocator* allocator = nullptr;
    // the retrieval metrics on /metrics, labelled with this model and version: rows, sequence, time
    struct RetrievalMetric {
        TRITONSERVER_MetricFamily* family;
        TRITONSERVER_Metric* metric;
        bool histogram;  // observed; a counter is incremented
    };
    std::map<std::string, RetrievalMetric> metrics;
    std::map<std::string, std::string> settings;
    std::map<std::string, std::unique_ptr<NpyArray>> arrays;
    std::vector<std::string> paths, names;
    std::vector<const char*> name_pointers;
    SeminarFusedStepSpec spec{};
};

const void* optional(ModelState& state, const std::string& name) {
    auto at = state.arrays.find(name);
    return at == state.arrays.end() ? nullptr : at->second->data;
}

std::unique_ptr<ModelState> load_model(const std::string& repo, const std::string& bundle) {
    auto state = std::make_unique<ModelState>();
    verify_file(bundle, "spec.txt");
    std::ifstream settings(bundle + "/spec.txt");
    if (!settings) throw std::runtime_error("cannot read " + bundle + "/spec.txt");
    for (std::string key, value; settings >> key && std::getline(settings >> std::ws, value);)
        state->settings[key] = value;
    auto setting = [&](const std::string& key) {
        auto at = state->settings.find(key);
        if (at == state->settings.end()) throw std::runtime_error(bundle + "/spec.txt has no " + key);
        return at->second;
    };
    auto integer = [&](const std::string& key) { return std::stoll(setting(key)); };
    setting("event_log_env");  // ModelInitialize reads it
    struct Wanted { const char* name; const char* descr; size_t dims; bool required; };
    const Wanted wanted[] = {
        {"gsu_weight", "<f4", 3, true},   {"gsu_bias", "<f4", 2, false},
        {"rotation", "<f4", 2, false},    {"centroids", "<f4", 3, true},
        {"offsets", "<i8", 1, true},      {"event_item", "<i4", 1, true},
        {"event_query", "<i4", 1, true},  {"block_offsets", "<i8", 1, true},
        {"blocks", "|u1", 2, true},       {"item_table", "<f4", 2, true},
        {"query_table", "<f4", 2, false}, {"user_ids", "<i8", 1, true},
        {"item_ids", "<i8", 1, true},
    };
    for (const Wanted& w : wanted) {
        const std::string path = bundle + "/" + w.name + ".npy";
        if (!w.required && access(path.c_str(), F_OK) != 0) continue;
        verify_file(bundle, std::string(w.name) + ".npy");
        state->arrays[w.name] = load_npy(path, w.descr, w.dims);
    }
    for (const char* key : {"query_encoder_onnx", "item_encoder_onnx", "ranking_head_onnx"}) {
        // <model>/<version>/<file>: checked against that version's own manifest
        const std::string graph = setting(key);
        const size_t slash = graph.find_last_of('/');
        verify_file(repo + "/" + graph.substr(0, slash), graph.substr(slash + 1));
        state->paths.push_back(repo + "/" + graph);
    }
    state->paths.push_back(setting("onnxruntime_library"));
    std::istringstream names(setting("tensor_names"));  // fused_step.cc's order
    for (std::string name; names >> name;) state->names.push_back(name);
    if (state->names.size() != 8)
        throw std::runtime_error(bundle + "/spec.txt: tensor_names must name 8 tensors");
    for (auto& name : state->names) state->name_pointers.push_back(name.c_str());
    SeminarFusedStepSpec& spec = state->spec;
    spec.query_encoder_onnx = state->paths[0].c_str();
    spec.item_encoder_onnx = state->paths[1].c_str();
    spec.ranking_head_onnx = state->paths[2].c_str();
    spec.onnxruntime_library = state->paths[3].c_str();
    spec.tensor_names = state->name_pointers.data();
    spec.query_len = integer("query_len");
    spec.text_dim = integer("text_dim");
    spec.dim = integer("dim");
    spec.heads = integer("heads");
    spec.k = integer("k");
    spec.rerank = integer("rerank");
    spec.alpha = std::stof(setting("alpha"));
    spec.code_size = integer("code_size");
    spec.n_subspaces = integer("n_subspaces");
    spec.sub_dim = integer("sub_dim");
    spec.sample_stride = integer("sample_stride");
    spec.depth_percent = integer("depth_percent");
    auto& arrays = state->arrays;
    spec.gsu_weight = reinterpret_cast<const float*>(arrays["gsu_weight"]->data);
    spec.gsu_bias = static_cast<const float*>(optional(*state, "gsu_bias"));
    spec.rotation = static_cast<const float*>(optional(*state, "rotation"));
    spec.centroids = reinterpret_cast<const float*>(arrays["centroids"]->data);
    spec.n_users = arrays["offsets"]->rows() - 1;
    spec.offsets = reinterpret_cast<const int64_t*>(arrays["offsets"]->data);
    spec.event_item = reinterpret_cast<const int32_t*>(arrays["event_item"]->data);
    spec.event_query = reinterpret_cast<const int32_t*>(arrays["event_query"]->data);
    spec.block_offsets = reinterpret_cast<const int64_t*>(arrays["block_offsets"]->data);
    spec.blocks = reinterpret_cast<const uint8_t*>(arrays["blocks"]->data);
    spec.item_table = reinterpret_cast<const float*>(arrays["item_table"]->data);
    spec.item_rows = arrays["item_table"]->rows();
    spec.query_table = static_cast<const float*>(optional(*state, "query_table"));
    spec.query_rows = spec.query_table ? arrays["query_table"]->rows() : 0;
    spec.user_ids = reinterpret_cast<const int64_t*>(arrays["user_ids"]->data);
    spec.user_id_count = arrays["user_ids"]->rows();
    spec.item_ids = reinterpret_cast<const int64_t*>(arrays["item_ids"]->data);
    spec.item_id_count = arrays["item_ids"]->rows();
    if (spec.n_users != arrays["user_ids"]->rows() ||
        arrays["block_offsets"]->rows() != spec.n_users + 1)
        throw std::runtime_error(bundle + ": the user arrays disagree on the number of users");
    return state;
}

TRITONSERVER_Error* error_of(TRITONSERVER_Error_Code code, const std::string& message) {
    return TRITONSERVER_ErrorNew(code, message.c_str());
}

struct BadRequest : std::runtime_error {
    TRITONSERVER_Error_Code code;
    BadRequest(TRITONSERVER_Error_Code c, const std::string& m) : std::runtime_error(m), code(c) {}
};

// One input's bytes, contiguous (a copy only when Triton hands it over in several buffers).
const char* input_bytes(TRITONBACKEND_Request* request, const char* name,
                        TRITONSERVER_DataType want, int64_t* rows, uint64_t* size,
                        std::string* joined) {
    TRITONBACKEND_Input* input;
    if (TRITONSERVER_Error* e = TRITONBACKEND_RequestInput(request, name, &input)) {
        std::string message = TRITONSERVER_ErrorMessage(e);
        TRITONSERVER_ErrorDelete(e);
        throw BadRequest(TRITONSERVER_ERROR_INVALID_ARG, message);
    }
    TRITONSERVER_DataType type;
    const int64_t* shape;
    uint32_t dims, buffers;
    TRITONBACKEND_InputProperties(input, nullptr, &type, &shape, &dims, size, &buffers);
    if (type != want || dims != 2 || shape[1] != 1)
        throw BadRequest(TRITONSERVER_ERROR_INVALID_ARG,
                         std::string(name) + " must be (B, 1) of the ensemble's type");
    *rows = shape[0];
    const void* buffer = nullptr;
    uint64_t bytes = 0;
    TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
    int64_t memory_id = 0;
    if (buffers == 1) {
        TRITONBACKEND_InputBuffer(input, 0, &buffer, &bytes, &memory, &memory_id);
        if (memory == TRITONSERVER_MEMORY_GPU)
            throw BadRequest(TRITONSERVER_ERROR_UNSUPPORTED, "GPU inputs are not supported");
        return static_cast<const char*>(buffer);
    }
    joined->clear();
    for (uint32_t b = 0; b < buffers; ++b) {
        TRITONBACKEND_InputBuffer(input, b, &buffer, &bytes, &memory, &memory_id);
        if (memory == TRITONSERVER_MEMORY_GPU)
            throw BadRequest(TRITONSERVER_ERROR_UNSUPPORTED, "GPU inputs are not supported");
        joined->append(static_cast<const char*>(buffer), bytes);
    }
    return joined->data();
}

struct Rows {
    std::vector<int64_t> user_id, item_id;
};

// A request's rows, checked as the features step checks them, appended to `rows`; false, with
// nothing appended, for a search (a row with a query), which the C++ step does not score.
bool read_request(TRITONBACKEND_Request* request, Rows* rows) {
    std::string users_copy, items_copy, query_copy;
    int64_t n_users, n_items, n_queries;
    uint64_t users_size, items_size, query_size;
    const char* users = input_bytes(request, kUserId, TRITONSERVER_TYPE_INT64, &n_users, &users_size, &users_copy);
    const char* items = input_bytes(request, kItemId, TRITONSERVER_TYPE_INT64, &n_items, &items_size, &items_copy);
    const char* query = input_bytes(request, kQuery, TRITONSERVER_TYPE_BYTES, &n_queries, &query_size, &query_copy);
    if (n_users != n_items || n_users != n_queries)
        throw BadRequest(TRITONSERVER_ERROR_INVALID_ARG,
                         "inputs disagree on the number of rows: user_id " + std::to_string(n_users) +
                             ", query " + std::to_string(n_queries) + ", item_id " + std::to_string(n_items));
    if (users_size != static_cast<uint64_t>(n_users) * 8 || items_size != static_cast<uint64_t>(n_items) * 8)
        throw BadRequest(TRITONSERVER_ERROR_INVALID_ARG, "user_id and item_id must hold 8 bytes a row");
    // BYTES: each element is a 4-byte little-endian length, then that many bytes
    uint64_t at = 0;
    bool search = false;
    for (int64_t r = 0; r < n_queries; ++r) {
        if (at + 4 > query_size)
            throw BadRequest(TRITONSERVER_ERROR_INVALID_ARG, "query is shorter than its rows");
        uint32_t length;
        std::memcpy(&length, query + at, 4);
        at += 4 + static_cast<uint64_t>(length);
        if (at > query_size)
            throw BadRequest(TRITONSERVER_ERROR_INVALID_ARG, "query is shorter than its rows");
        search = search || length != 0;
    }
    if (search) return false;
    const size_t first = rows->user_id.size();
    rows->user_id.resize(first + n_users);
    rows->item_id.resize(first + n_items);
    std::memcpy(rows->user_id.data() + first, users, users_size);
    std::memcpy(rows->item_id.data() + first, items, items_size);
    for (auto [name, ids] : {std::pair{"user_id", rows->user_id.data()}, std::pair{"item_id", rows->item_id.data()}})
        for (int64_t r = 0; r < n_users; ++r)
            if (ids[first + r] < 0) {
                const std::string message = std::string(name) + " must be >= 0, row " + std::to_string(r) +
                                            " has " + std::to_string(ids[first + r]);
                rows->user_id.resize(first);
                rows->item_id.resize(first);
                throw BadRequest(TRITONSERVER_ERROR_INVALID_ARG, message);
            }
    return true;
}

void respond(TRITONBACKEND_Request* request, const float* scores, int64_t n, TRITONSERVER_Error* error);

// ---- searches, forwarded to the search model inside the server ----------------------------------
struct Forwarded;

// The searches of one execute in flight: each completes when its response came back and Triton
// released the forwarded request (which reads the original request's input buffers).
struct InFlight {
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<std::unique_ptr<Forwarded>> calls;
};

struct Forwarded {
    InFlight* batch = nullptr;
    TRITONSERVER_InferenceRequest* request = nullptr;
    TRITONSERVER_InferenceResponse* response = nullptr;
    bool responded = false, released = false;
    ~Forwarded() {
        if (response) TRITONSERVER_InferenceResponseDelete(response);
        if (request) TRITONSERVER_InferenceRequestDelete(request);
    }
};

void on_forwarded_response(TRITONSERVER_InferenceResponse* response, const uint32_t flags, void* userp) {
    auto* call = static_cast<Forwarded*>(userp);
    std::lock_guard<std::mutex> lock(call->batch->mutex);
    if (response) {
        if (call->response) TRITONSERVER_InferenceResponseDelete(call->response);
        call->response = response;
    }
    if (flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL) call->responded = true;
    call->batch->changed.notify_all();
}

void on_forwarded_release(TRITONSERVER_InferenceRequest*, const uint32_t flags, void* userp) {
    auto* call = static_cast<Forwarded*>(userp);
    if (!(flags & TRITONSERVER_REQUEST_RELEASE_ALL)) return;
    std::lock_guard<std::mutex> lock(call->batch->mutex);
    call->released = true;
    call->batch->changed.notify_all();
}

TRITONSERVER_Error* allocate_on_heap(TRITONSERVER_ResponseAllocator*, const char*, size_t byte_size,
                                     TRITONSERVER_MemoryType, int64_t, void*, void** buffer,
                                     void** buffer_userp, TRITONSERVER_MemoryType* actual_memory_type,
                                     int64_t* actual_memory_type_id) {
    *buffer = byte_size ? std::malloc(byte_size) : nullptr;
    *buffer_userp = nullptr;
    *actual_memory_type = TRITONSERVER_MEMORY_CPU;
    *actual_memory_type_id = 0;
    if (byte_size && !*buffer)
        return error_of(TRITONSERVER_ERROR_INTERNAL, "out of memory for a forwarded search's scores");
    return nullptr;
}

TRITONSERVER_Error* free_on_heap(TRITONSERVER_ResponseAllocator*, void* buffer, void*, size_t,
                                 TRITONSERVER_MemoryType, int64_t) {
    std::free(buffer);
    return nullptr;
}

// Throw a Triton error as a BadRequest carrying its code and message.
void check(TRITONSERVER_Error* error, const std::string& context) {
    if (!error) return;
    BadRequest failure(TRITONSERVER_ErrorCode(error), context + TRITONSERVER_ErrorMessage(error));
    TRITONSERVER_ErrorDelete(error);
    throw failure;
}

// Send `origin` on to the search model with the same inputs (its buffers, not copies).
void forward(ModelState& state, TRITONBACKEND_Request* origin, Forwarded* call) {
    const std::string context = "forwarding the search to model " + state.search_model + ": ";
    check(TRITONSERVER_InferenceRequestNew(&call->request, state.server, state.search_model.c_str(),
                                           state.version),
          context);
    for (const char* name : {kUserId, kQuery, kItemId}) {
        TRITONBACKEND_Input* input;
        TRITONSERVER_DataType type;
        const int64_t* shape;
        uint32_t dims, buffers;
        uint64_t size;
        check(TRITONBACKEND_RequestInput(origin, name, &input), context);
        check(TRITONBACKEND_InputProperties(input, nullptr, &type, &shape, &dims, &size, &buffers), context);
        check(TRITONSERVER_InferenceRequestAddInput(call->request, name, type, shape, dims), context);
        for (uint32_t b = 0; b < buffers; ++b) {
            const void* buffer;
            uint64_t bytes;
            TRITONSERVER_MemoryType memory;
            int64_t memory_id;
            check(TRITONBACKEND_InputBuffer(input, b, &buffer, &bytes, &memory, &memory_id), context);
            check(TRITONSERVER_InferenceRequestAppendInputData(call->request, name, buffer, bytes,
                                                               memory, memory_id),
                  context);
        }
    }
    check(TRITONSERVER_InferenceRequestAddRequestedOutput(call->request, kScore), context);
    check(TRITONSERVER_InferenceRequestSetReleaseCallback(call->request, on_forwarded_release, call), context);
    check(TRITONSERVER_InferenceRequestSetResponseCallback(call->request, state.allocator, nullptr,
                                                           on_forwarded_response, call),
          context);
    check(TRITONSERVER_ServerInferAsync(state.server, call->request, nullptr), context);
}

// Answer `origin` with the search model's response: its scores, or its error.
void answer_forwarded(TRITONBACKEND_Request* origin, const std::string& search_model,
                      Forwarded& call, bool* success) {
    const std::string context = "the search model " + search_model + ": ";
    *success = false;
    if (!call.response) {
        respond(origin, nullptr, 0, error_of(TRITONSERVER_ERROR_INTERNAL, context + "no response"));
        return;
    }
    if (TRITONSERVER_Error* failed = TRITONSERVER_InferenceResponseError(call.response)) {
        respond(origin, nullptr, 0,
                error_of(TRITONSERVER_ErrorCode(failed), TRITONSERVER_ErrorMessage(failed)));
        return;
    }
    uint32_t outputs = 0;
    const char* name = nullptr;
    TRITONSERVER_DataType type = TRITONSERVER_TYPE_INVALID;
    const int64_t* shape = nullptr;
    uint64_t dims = 0;
    const void* base = nullptr;
    size_t bytes = 0;
    TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
    int64_t memory_id = 0;
    void* userp = nullptr;
    TRITONSERVER_Error* error = TRITONSERVER_InferenceResponseOutputCount(call.response, &outputs);
    if (!error && outputs != 1)
        error = error_of(TRITONSERVER_ERROR_INTERNAL, context + "answered " + std::to_string(outputs) + " outputs");
    if (!error)
        error = TRITONSERVER_InferenceResponseOutput(call.response, 0, &name, &type, &shape, &dims, &base,
                                                     &bytes, &memory, &memory_id, &userp);
    if (!error && (std::string(name) != kScore || type != TRITONSERVER_TYPE_FP32 || dims != 2 ||
                   shape[1] != 1 || bytes != static_cast<size_t>(shape[0]) * sizeof(float)))
        error = error_of(TRITONSERVER_ERROR_INTERNAL, context + "answered another tensor than score (B, 1) FP32");
    *success = error == nullptr;
    respond(origin, static_cast<const float*>(base), error ? 0 : shape[0], error);
}

void respond(TRITONBACKEND_Request* request, const float* scores, int64_t n, TRITONSERVER_Error* error) {
    TRITONBACKEND_Response* response;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseNew(&response, request)) {
        TRITONSERVER_ErrorDelete(e);
        if (error) TRITONSERVER_ErrorDelete(error);
        return;
    }
    if (!error) {
        const int64_t shape[2] = {n, 1};
        TRITONBACKEND_Output* output;
        error = TRITONBACKEND_ResponseOutput(response, &output, kScore, TRITONSERVER_TYPE_FP32, shape, 2);
        void* buffer;
        TRITONSERVER_MemoryType memory = TRITONSERVER_MEMORY_CPU;
        int64_t memory_id = 0;
        if (!error) error = TRITONBACKEND_OutputBuffer(output, &buffer, n * sizeof(float), &memory, &memory_id);
        if (!error && memory == TRITONSERVER_MEMORY_GPU)
            error = error_of(TRITONSERVER_ERROR_INTERNAL, "Triton offered a GPU output buffer");
        if (!error) std::memcpy(buffer, scores, n * sizeof(float));
    }
    if (TRITONSERVER_Error* e = TRITONBACKEND_ResponseSend(response, TRITONSERVER_RESPONSE_COMPLETE_FINAL, error))
        TRITONSERVER_ErrorDelete(e);
    if (error) TRITONSERVER_ErrorDelete(error);
}

// ---- the retrieval metrics ------------------------------------------------------------------------
// Each is a spec.txt line "metric_<key> <name> <COUNTER|HISTOGRAM> <buckets,...|-> <description>",
// written from the Python step's own definitions (families of one name must agree).
TRITONSERVER_Error* create_metrics(ModelState& state, const std::string& model, uint64_t version) {
    const std::string version_text = std::to_string(version);
    TRITONSERVER_Parameter* labels[2] = {
        TRITONSERVER_ParameterNew("model", TRITONSERVER_PARAMETER_STRING, model.c_str()),
        TRITONSERVER_ParameterNew("version", TRITONSERVER_PARAMETER_STRING, version_text.c_str())};
    TRITONSERVER_Error* error = nullptr;
    for (const char* key : {"rows", "sequence", "time"}) {
        auto at = state.settings.find(std::string("metric_") + key);
        if (at == state.settings.end() || error) continue;
        std::istringstream line(at->second);
        std::string name, kind, bucket_list, description;
        line >> name >> kind >> bucket_list;
        std::getline(line >> std::ws, description);
        const bool histogram = kind == "HISTOGRAM";
        std::vector<double> buckets;
        std::istringstream bucket_items(bucket_list);
        for (std::string item; histogram && std::getline(bucket_items, item, ',');) buckets.push_back(std::stod(item));
        TRITONSERVER_MetricFamily* family = nullptr;
        TRITONSERVER_Metric* metric = nullptr;
        TRITONSERVER_MetricArgs* args = nullptr;
        error = TRITONSERVER_MetricFamilyNew(
            &family, histogram ? TRITONSERVER_METRIC_KIND_HISTOGRAM : TRITONSERVER_METRIC_KIND_COUNTER,
            name.c_str(), description.c_str());
        if (!error && histogram) error = TRITONSERVER_MetricArgsNew(&args);
        if (!error && histogram) error = TRITONSERVER_MetricArgsSetHistogram(args, buckets.data(), buckets.size());
        if (!error)
            error = TRITONSERVER_MetricNewWithArgs(&metric, family, const_cast<const TRITONSERVER_Parameter**>(labels),
                                                   2, args);
        if (args) TRITONSERVER_MetricArgsDelete(args);
        if (!error) state.metrics[key] = {family, metric, histogram};
        else if (family) TRITONSERVER_MetricFamilyDelete(family);
    }
    for (TRITONSERVER_Parameter* label : labels) TRITONSERVER_ParameterDelete(label);
    return error;
}

void delete_metrics(ModelState& state) {
    for (auto& [key, entry] : state.metrics) {
        TRITONSERVER_MetricDelete(entry.metric);  // the metric before its family
        TRITONSERVER_MetricFamilyDelete(entry.family);
    }
    state.metrics.clear();
}

void update_metric(ModelState& state, const char* key, double value) {
    auto at = state.metrics.find(key);
    if (at == state.metrics.end()) return;
    TRITONSERVER_Error* error = at->second.histogram ? TRITONSERVER_MetricObserve(at->second.metric, value)
                                                     : TRITONSERVER_MetricIncrement(at->second.metric, value);
    if (error) TRITONSERVER_ErrorDelete(error);
}

// The stored sequence length of each distinct user among `n` rows (0 for a cold start), as the
// Python step observes it per request.
void observe_sequences(ModelState& state, const int64_t* user_id, int64_t n) {
    const SeminarFusedStepSpec& spec = state.spec;
    std::vector<int64_t> users(user_id, user_id + n);
    std::sort(users.begin(), users.end());
    users.erase(std::unique(users.begin(), users.end()), users.end());
    for (int64_t user : users) {
        const int64_t* at = std::lower_bound(spec.user_ids, spec.user_ids + spec.user_id_count, user);
        const bool known = at != spec.user_ids + spec.user_id_count && *at == user;
        const int64_t index = at - spec.user_ids;
        update_metric(state, "sequence", known ? double(spec.offsets[index + 1] - spec.offsets[index]) : 0.0);
    }
}

}  // namespace

extern "C" {

TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend*) {
    uint32_t major = 0, minor = 0;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ApiVersion(&major, &minor)) return e;
    if (major != 1)
        return error_of(TRITONSERVER_ERROR_UNSUPPORTED,
                        "seminar_native needs backend API 1.x, tritonserver has " +
                            std::to_string(major) + "." + std::to_string(minor));
    return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
    uint64_t version;
    TRITONBACKEND_ArtifactType type;
    const char* location;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelVersion(model, &version)) return e;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelRepository(model, &type, &location)) return e;
    if (type != TRITONBACKEND_ARTIFACT_FILESYSTEM)
        return error_of(TRITONSERVER_ERROR_UNSUPPORTED, "seminar_native reads a model folder");
    const std::string model_dir = location;
    const std::string repo = model_dir.substr(0, model_dir.find_last_of('/'));
    std::unique_ptr<ModelState> state;
    try {
        state = load_model(repo, model_dir + "/" + std::to_string(version) + "/" + kBundleDir);
    } catch (const std::exception& e) {
        return error_of(TRITONSERVER_ERROR_INVALID_ARG, e.what());
    }
    state->version = static_cast<int64_t>(version);
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelServer(model, &state->server)) return e;
    TRITONSERVER_Message* config;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelConfig(model, 1, &config)) return e;
    const char* json;
    size_t json_bytes;
    TRITONSERVER_Error* failed = TRITONSERVER_MessageSerializeToJson(config, &json, &json_bytes);
    if (!failed) {
        // "parameters":{"search_model":{"string_value":"pipeline"}}, as Triton serializes it
        const std::string text(json, json_bytes);
        const std::string key = std::string("\"") + kSearchModelParameter + "\":{\"string_value\":\"";
        const size_t at = text.find(key);
        if (at != std::string::npos)
            state->search_model = text.substr(at + key.size(), text.find('"', at + key.size()) - at - key.size());
    }
    TRITONSERVER_MessageDelete(config);
    if (failed) return failed;
    const char* event_log = std::getenv(state->settings.at("event_log_env").c_str());
    if (event_log && *event_log) {
        if (state->search_model.empty())
            return error_of(TRITONSERVER_ERROR_UNSUPPORTED,
                            "tritonserver reads an online event log (" +
                                state->settings.at("event_log_env") +
                                "), which the native step does not read, and this model names no "
                                "search_model to forward its requests to");
        state->forward_all = true;
    }
    if (!state->search_model.empty())
        if (TRITONSERVER_Error* e = TRITONSERVER_ResponseAllocatorNew(&state->allocator, allocate_on_heap,
                                                                      free_on_heap, nullptr))
            return e;
    const char* model_name;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelName(model, &model_name)) return e;
    if (TRITONSERVER_Error* e = create_metrics(*state, model_name, version)) {
        delete_metrics(*state);
        if (state->allocator) TRITONSERVER_ResponseAllocatorDelete(state->allocator);
        return e;
    }
    return TRITONBACKEND_ModelSetState(model, state.release());
}

TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
    void* state;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelState(model, &state)) return e;
    auto* model_state = static_cast<ModelState*>(state);  // null when its initialize failed
    if (model_state) delete_metrics(*model_state);
    if (model_state && model_state->allocator) TRITONSERVER_ResponseAllocatorDelete(model_state->allocator);
    delete model_state;
    return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
    TRITONBACKEND_Model* model;
    void* state;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceModel(instance, &model)) return e;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelState(model, &state)) return e;
    char error[kErrorBytes] = {};
    void* step = seminar_fused_step_open(&static_cast<ModelState*>(state)->spec, error, sizeof error);
    if (!step) return error_of(TRITONSERVER_ERROR_INVALID_ARG, error);
    return TRITONBACKEND_ModelInstanceSetState(instance, step);
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
    void* step;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceState(instance, &step)) return e;
    seminar_fused_step_close(step);
    return nullptr;
}

TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                       TRITONBACKEND_Request** requests,
                                                       const uint32_t request_count) {
    const uint64_t exec_start = now_ns();
    void* step;
    TRITONBACKEND_Model* model;
    void* model_state;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceState(instance, &step)) return e;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceModel(instance, &model)) return e;
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelState(model, &model_state)) return e;
    ModelState& state = *static_cast<ModelState*>(model_state);
    Rows rows;
    std::vector<int64_t> first(request_count), count(request_count, -1);
    std::vector<TRITONSERVER_Error*> refused(request_count, nullptr);
    std::vector<Forwarded*> forwarded(request_count, nullptr);
    InFlight searches;
    for (uint32_t r = 0; r < request_count; ++r) {
        first[r] = static_cast<int64_t>(rows.user_id.size());
        try {
            if (!state.forward_all && read_request(requests[r], &rows)) {
                count[r] = static_cast<int64_t>(rows.user_id.size()) - first[r];
            } else if (state.search_model.empty()) {
                refused[r] = error_of(TRITONSERVER_ERROR_UNSUPPORTED,
                                      "the native step scores rows without a query, and this model "
                                      "names no search_model to forward searches to");
            } else {
                auto call = std::make_unique<Forwarded>();
                call->batch = &searches;
                forward(state, requests[r], call.get());
                forwarded[r] = call.get();
                searches.calls.push_back(std::move(call));
            }
        } catch (const BadRequest& e) {
            refused[r] = error_of(e.code, e.what());
        } catch (const std::exception& e) {
            refused[r] = error_of(TRITONSERVER_ERROR_INTERNAL, e.what());
        }
    }
    const uint64_t compute_start = now_ns();
    const int64_t n = static_cast<int64_t>(rows.user_id.size());
    std::vector<float> scores(n);
    char error[kErrorBytes] = {};
    const int code = n ? seminar_fused_step_score_ids(step, n, rows.user_id.data(), rows.item_id.data(),
                                                      scores.data(), error, sizeof error)
                       : 0;
    {
        std::unique_lock<std::mutex> lock(searches.mutex);
        searches.changed.wait(lock, [&] {
            for (const auto& call : searches.calls)
                if (!call->responded || !call->released) return false;
            return true;
        });
    }
    const uint64_t compute_end = now_ns();
    if (n && !code) {
        update_metric(state, "rows", double(n));
        update_metric(state, "time", seminar_fused_step_last_topk_seconds(step));
        for (uint32_t r = 0; r < request_count; ++r)
            if (count[r] > 0) observe_sequences(state, rows.user_id.data() + first[r], count[r]);
    }
    for (uint32_t r = 0; r < request_count; ++r) {
        bool success;
        if (forwarded[r]) {
            answer_forwarded(requests[r], state.search_model, *forwarded[r], &success);
        } else {
            TRITONSERVER_Error* outcome = refused[r];
            if (!outcome && code)
                outcome = error_of(code == kFusedStepBadRequest ? TRITONSERVER_ERROR_INVALID_ARG
                                                                : TRITONSERVER_ERROR_INTERNAL,
                                   error);
            success = outcome == nullptr;
            respond(requests[r], scores.data() + first[r], count[r], outcome);
        }
        if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportStatistics(
                instance, requests[r], success, exec_start, compute_start, compute_end, now_ns()))
            TRITONSERVER_ErrorDelete(e);
        TRITONBACKEND_RequestRelease(requests[r], TRITONSERVER_REQUEST_RELEASE_ALL);
    }
    searches.calls.clear();  // deletes the responses and the released requests
    if (TRITONSERVER_Error* e = TRITONBACKEND_ModelInstanceReportBatchStatistics(
            instance, request_count, exec_start, compute_start, compute_end, now_ns()))
        TRITONSERVER_ErrorDelete(e);
    return nullptr;
}

}  // extern "C"
