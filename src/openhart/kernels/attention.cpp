// Exact attention without a mask on the CPU: out = softmax(q k^T * scale) v.
//
// HART's inference attention is one pattern: the queries of the current scale against every
// cached key, nothing masked. This kernel is the flash-attention loop specialised to it:
//
//   for each (batch, head, block of q_block queries), in parallel:
//     for each block of kv_block keys:
//       S  = scale * Q K^T               one GEMM, fp32 out
//       m' = max(m, rowmax(S))           running row maximum
//       P  = exp(S - m')                 one pass, summed into l as it goes
//       O  = O * exp(m - m') + P V       a second GEMM accumulating into O
//     out = O / l
//
// fp32 multiplies with the BLAS PyTorch links (sgemm_, MKL on x86), reading q, k and v in place.
// bf16 multiplies in bf16 with fp32 accumulation through the oneDNN micro-kernels PyTorch ships
// (at::native::cpublas::brgemm): with `vnni`, K and V are repacked once per call into the pairs
// AVX512-BF16 and AMX read; without it (CPUs with no native bf16) into plain K^T. The softmax
// is always fp32, with at::vec's vectorised exp (exp_u20). (A cubic exp accurate to 1e-4, enough
// for bf16 probabilities, measured no faster than exp_u20 on AVX2: 2.93e9 against 2.85e9 per core.)

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc);

namespace {

using Vec = at::vec::Vectorized<float>;
using BF16 = at::BFloat16;
constexpr int64_t kPack = 64;  // bf16 VNNI: columns per micro-kernel call (oneDNN's packing block)

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Geometry of one call, shared by the packing and the main loop.
struct Shape {
  int64_t batch, heads, lq, lkv, dim;
  int64_t q_block, kv_block, kv_blocks;
  bool vnni;
  // bf16 VNNI: every kv block is padded with zero keys to a multiple of kPack.
  int64_t padded(int64_t n) const { return vnni ? round_up(n, kPack) : n; }
  int64_t block_len(int64_t j) const { return std::min(kv_block, lkv - j * kv_block); }
  // Elements of one (batch, head)'s packed keys (or values).
  int64_t packed_size() const { return (kv_blocks - 1) * kv_block * dim + padded(block_len(kv_blocks - 1)) * dim; }
};

// Row-major C (m x n) = alpha * A op(B) + beta * C through column-major BLAS, with A (m x k) and
// op(B) = B^T for B stored (n x k) when trans_b, else B stored (k x n).
void sgemm_rowmajor(bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                    const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  // Row-major C = A op(B) is column-major C^T = op(B)^T A^T.
  const char tb = trans_b ? 'T' : 'N', ta = 'N';
  const int M = n, N = m, K = k, LDB = ldb, LDA = lda, LDC = ldc;
  sgemm_(&tb, &ta, &M, &N, &K, &alpha, b, &LDB, a, &LDA, &beta, c, &LDC);
}

// bf16 K (lkv x dim) -> per kv block, with vnni pairs of dims (dim/2 x kPack x 2) per chunk of
// kPack keys, zero keys up to the padded length; without, plain K^T (dim x n).
void pack_keys(const BF16* k, int64_t ld, const Shape& s, BF16* out) {
  for (int64_t j = 0; j < s.kv_blocks; ++j) {
    const int64_t n = s.block_len(j), np = s.padded(n);
    const BF16* src = k + j * s.kv_block * ld;
    BF16* dst = out + j * s.kv_block * s.dim;
    if (!s.vnni) {
      for (int64_t r = 0; r < n; ++r)
        for (int64_t d = 0; d < s.dim; ++d) dst[d * n + r] = src[r * ld + d];
      continue;
    }
    for (int64_t c = 0; c < np; c += kPack) {
      BF16* chunk = dst + c * s.dim;
      for (int64_t r = 0; r < kPack; ++r)
        for (int64_t d = 0; d < s.dim; ++d)
          chunk[((d / 2) * kPack + r) * 2 + d % 2] = c + r < n ? src[(c + r) * ld + d] : BF16(0);
    }
  }
}

// bf16 VNNI only: V (lkv x dim) -> per kv block, pairs of keys (np/2 x kPack x 2) per chunk of
// kPack dims, zero rows up to the padded length.
void pack_values(const BF16* v, int64_t ld, const Shape& s, BF16* out) {
  for (int64_t j = 0; j < s.kv_blocks; ++j) {
    const int64_t n = s.block_len(j), np = s.padded(n);
    const BF16* src = v + j * s.kv_block * ld;
    BF16* dst = out + j * s.kv_block * s.dim;
    for (int64_t c = 0; c < s.dim; c += kPack) {
      BF16* chunk = dst + c * np;
      for (int64_t r = 0; r < np; ++r)
        for (int64_t d = 0; d < kPack; ++d)
          chunk[((r / 2) * kPack + d) * 2 + r % 2] = r < n ? src[r * ld + c + d] : BF16(0);
    }
  }
}

float row_max(const float* x, int64_t n) {
  return at::vec::reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, x, n);
}

// p = exp(x * scale - shift) over a row of fp32 probabilities; returns their sum.
float exp_row(const float* x, int64_t n, float scale, float shift, float* p) {
  const Vec vscale(scale), vshift(shift);
  Vec vsum(0.f);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec e = at::vec::fmsub(Vec::loadu(x + i), vscale, vshift).exp_u20();
    e.store(p + i);
    vsum += e;
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (; i < n; ++i) {
    p[i] = std::exp(x[i] * scale - shift);
    sum += p[i];
  }
  return sum;
}

// The same for bf16 probabilities; returns the sum of the rounded values, those P V multiplies.
float exp_row(const float* x, int64_t n, float scale, float shift, BF16* p) {
  constexpr int64_t step = 2 * Vec::size();  // one Vectorized<BFloat16>
  const Vec vscale(scale), vshift(shift);
  Vec vsum(0.f);
  int64_t i = 0;
  for (; i + step <= n; i += step) {
    const Vec e0 = at::vec::fmsub(Vec::loadu(x + i), vscale, vshift).exp_u20();
    const Vec e1 = at::vec::fmsub(Vec::loadu(x + i + Vec::size()), vscale, vshift).exp_u20();
    const auto rounded = at::vec::convert_from_float<BF16>(e0, e1);
    rounded.store(p + i);
    const auto [r0, r1] = at::vec::convert_to_float<BF16>(rounded);
    vsum += r0 + r1;
  }
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, vsum);
  for (; i < n; ++i) {
    p[i] = static_cast<BF16>(std::exp(x[i] * scale - shift));
    sum += static_cast<float>(p[i]);
  }
  return sum;
}

// The two products of one (query block, kv block), per dtype. `packed_k`/`packed_v` are this
// (batch, head)'s packed keys and values at kv block j (bf16 only).
struct Products {
  const Shape& s;
  float scale;

  // S (m x np) = scale * Q K^T for fp32; Q K^T for bf16 (the micro-kernel has no alpha).
  void scores(const float* q, int64_t ldq, const float* k, int64_t ldk, const float*, int64_t m, int64_t n,
              float* out) const {
    sgemm_rowmajor(true, m, n, s.dim, scale, q, ldq, k, ldk, 0.f, out, n);
  }
  void scores(const BF16* q, int64_t ldq, const BF16*, int64_t, const BF16* packed_k, int64_t m, int64_t n,
              float* out) const {
    const int64_t np = s.padded(n);
    if (!s.vnni) {
      at::native::cpublas::brgemm(m, n, s.dim, ldq, n, n, false, q, packed_k, out, false);
      return;
    }
    for (int64_t c = 0; c < np; c += kPack)
      at::native::cpublas::brgemm(m, kPack, s.dim, ldq, kPack, np, false, q, packed_k + c * s.dim, out + c, true);
  }
  // O (m x dim) = P V, or O + P V when `accumulate`.
  void values(const float* p, const float* v, int64_t ldv, const float*, int64_t m, int64_t n, bool accumulate,
              float* out) const {
    sgemm_rowmajor(false, m, s.dim, n, 1.f, p, n, v, ldv, accumulate ? 1.f : 0.f, out, s.dim);
  }
  void values(const BF16* p, const BF16* v, int64_t ldv, const BF16* packed_v, int64_t m, int64_t n,
              bool accumulate, float* out) const {
    const int64_t np = s.padded(n);
    if (!s.vnni) {
      at::native::cpublas::brgemm(m, s.dim, n, n, ldv, s.dim, accumulate, p, v, out, false);
      return;
    }
    for (int64_t c = 0; c < s.dim; c += kPack)
      at::native::cpublas::brgemm(m, kPack, np, np, kPack, s.dim, accumulate, p, packed_v + c * np, out + c, true);
  }
};

template <typename T>
void attention_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& out, double scale,
                    int64_t q_block, int64_t kv_block, bool vnni) {
  constexpr bool is_bf16 = std::is_same_v<T, BF16>;
  Shape s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 0, 0, 0, vnni};
  s.q_block = std::min(q_block, s.lq);
  s.kv_block = vnni ? round_up(std::min(kv_block, s.lkv), kPack) : std::min(kv_block, s.lkv);
  s.kv_blocks = (s.lkv + s.kv_block - 1) / s.kv_block;
  const int64_t bh = s.batch * s.heads, q_blocks = (s.lq + s.q_block - 1) / s.q_block;
  const int64_t packed = is_bf16 ? s.packed_size() : 0;
  const Products products{s, static_cast<float>(scale)};
  const float softmax_scale = is_bf16 ? static_cast<float>(scale) : 1.f;
  const T* q_data = q.const_data_ptr<T>();
  const T* k_data = k.const_data_ptr<T>();
  const T* v_data = v.const_data_ptr<T>();
  T* o_data = out.data_ptr<T>();

  // bf16: repack K (and with vnni, V) once per (batch, head).
  std::vector<BF16> keys(bh * packed), values(vnni ? bh * packed : 0);
  if constexpr (is_bf16) {
    at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t b = i / s.heads, h = i % s.heads;
        pack_keys(k_data + b * k.stride(0) + h * k.stride(1), k.stride(2), s, keys.data() + i * packed);
        if (vnni)
          pack_values(v_data + b * v.stride(0) + h * v.stride(1), v.stride(2), s, values.data() + i * packed);
      }
    });
  }

  at::parallel_for(0, bh * q_blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t kvp = s.padded(s.kv_block);
    std::vector<float> scores(s.q_block * kvp), acc(s.q_block * s.dim), maxes(s.q_block), sums(s.q_block);
    std::vector<T> probs(is_bf16 ? s.q_block * kvp : 0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / q_blocks, b = i / s.heads, h = i % s.heads;
      const int64_t q0 = (task % q_blocks) * s.q_block, m = std::min(s.q_block, s.lq - q0);
      const T* qb = q_data + b * q.stride(0) + h * q.stride(1) + q0 * q.stride(2);
      std::fill(maxes.begin(), maxes.end(), -std::numeric_limits<float>::infinity());
      std::fill(sums.begin(), sums.end(), 0.f);
      for (int64_t j = 0; j < s.kv_blocks; ++j) {
        const int64_t n = s.block_len(j), np = s.padded(n);
        const T* kj = k_data + b * k.stride(0) + h * k.stride(1) + j * s.kv_block * k.stride(2);
        const T* vj = v_data + b * v.stride(0) + h * v.stride(1) + j * s.kv_block * v.stride(2);
        const T* packed_k = reinterpret_cast<const T*>(keys.data() + i * packed + j * s.kv_block * s.dim);
        const T* packed_v = reinterpret_cast<const T*>(values.data() + i * packed + j * s.kv_block * s.dim);
        products.scores(qb, q.stride(2), kj, k.stride(2), packed_k, m, n, scores.data());
        // Online softmax over the n real keys; padded keys get probability 0.
        T* p = is_bf16 ? probs.data() : reinterpret_cast<T*>(scores.data());
        for (int64_t r = 0; r < m; ++r) {
          float* row = scores.data() + r * np;
          const float new_max = std::max(maxes[r], row_max(row, n) * softmax_scale);
          const float rescale = std::exp(maxes[r] - new_max);  // 0 on the first block
          sums[r] = sums[r] * rescale + exp_row(row, n, softmax_scale, new_max, p + r * np);
          std::fill(p + r * np + n, p + r * np + np, T(0));
          maxes[r] = new_max;
          if (j > 0 && rescale != 1.f)
            at::vec::map([rescale](Vec x) { return x * Vec(rescale); }, acc.data() + r * s.dim,
                         acc.data() + r * s.dim, s.dim);
        }
        products.values(p, vj, v.stride(2), packed_v, m, n, j > 0, acc.data());
      }
      T* ob = o_data + b * out.stride(0) + h * out.stride(1) + q0 * out.stride(2);
      for (int64_t r = 0; r < m; ++r) {  // out = O / l
        const float inv = 1.f / sums[r];
        for (int64_t d = 0; d < s.dim; ++d) ob[r * out.stride(2) + d] = static_cast<T>(acc[r * s.dim + d] * inv);
      }
    }
    if (vnni) at::native::cpublas::brgemm_release(true);
  });
}

}  // namespace

// q (B, H, Lq, D), k and v (B, H, Lkv, D), the last dimension contiguous; returns (B, H, Lq, D).
at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, int64_t q_block,
                     int64_t kv_block, bool vnni) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu(), "attention: CPU tensors only");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k, v must be (B, H, L, D)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "attention: q, k, v must share a dtype");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "attention: k and v must be (B, H, Lkv, D) with q's B, H and D");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "attention: the last dimension must be contiguous");
  TORCH_CHECK(k.size(2) > 0 && q_block > 0 && kv_block > 0, "attention: empty keys or blocks");
  TORCH_CHECK(!vnni || (q.scalar_type() == at::kBFloat16 && q.size(3) % kPack == 0),
              "attention: the VNNI path takes bf16 with a head size that is a multiple of 64");
  // (B, Lq, H, D) in memory, as SDPA's CPU kernel returns it: the model's (B, L, H*D) view is free.
  at::Tensor out = at::empty({q.size(0), q.size(2), q.size(1), q.size(3)}, q.options()).transpose(1, 2);
  if (q.size(2) == 0) return out;
  if (q.scalar_type() == at::kFloat) {
    attention_impl<float>(q, k, v, out, scale, q_block, kv_block, false);
  } else if (q.scalar_type() == at::kBFloat16) {
    attention_impl<BF16>(q, k, v, out, scale, q_block, kv_block, vnni);
  } else {
    TORCH_CHECK(false, "attention: fp32 or bf16 only, got ", q.scalar_type());
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attention", &attention, "Exact attention without a mask (CPU)", py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("scale"), py::arg("q_block"), py::arg("kv_block"), py::arg("vnni"));
}
