// harness.cpp: the host driver of the CPU emulator. Built (by spruce/kernels/cuda/emu.py) into a shared library
// with `g++ -include cuda_emu.h -x c++ -fno-strict-aliasing -Wno-unknown-pragmas`; the .cu sources and the export
// table are generated include files, so the kernels compiled here are the same text NVRTC compiles.
//
// C API (ctypes):
//   int spruce_emu_launch(const char* name, const unsigned grid[3], const unsigned block[3],
//                         unsigned long long smem_bytes, void** args, int order, unsigned long long seed,
//                         char* err, int err_len)
//     Runs kernel `name` (a name expression such as "csr_spmm_subwarp<8,true>") with `args[i]` pointing at the
//     value of parameter i, as cuLaunchKernel takes them. Returns 0 on success, 1 for an unknown kernel, 2 when the
//     launch or the emulator failed (message in err).
//   int spruce_emu_num_kernels(); const char* spruce_emu_kernel_name(int i)
#include "spruce_emu_sources.inc"

#include <cstdio>
#include <type_traits>
#include <utility>

namespace {

template <typename... A, size_t... I>
void call_kernel(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A>
std::function<void()> bind_args(void (*kernel)(A...), void** args) {
  return [kernel, args] { call_kernel(kernel, args, std::index_sequence_for<A...>{}); };
}

struct Entry {
  const char* name;
  std::function<void()> (*bind)(void** args);
};

#define SPRUCE_EMU_ENTRY(...) \
  Entry{#__VA_ARGS__, [](void** a) -> std::function<void()> { return bind_args(&__VA_ARGS__, a); }}

const Entry kEntries[] = {
#include "spruce_emu_entries.inc"
};
constexpr int kNumEntries = sizeof(kEntries) / sizeof(kEntries[0]);

}  // namespace

#define SPRUCE_EMU_API extern "C" __attribute__((visibility("default")))

SPRUCE_EMU_API int spruce_emu_num_kernels() { return kNumEntries; }

SPRUCE_EMU_API const char* spruce_emu_kernel_name(int i) {
  return i >= 0 && i < kNumEntries ? kEntries[i].name : nullptr;
}

SPRUCE_EMU_API int spruce_emu_launch(const char* name, const unsigned* grid, const unsigned* block,
                                     unsigned long long smem_bytes, void** args, int order, unsigned long long seed,
                                     char* err, int err_len) {
  for (const Entry& e : kEntries) {
    if (strcmp(e.name, name) != 0) continue;
    const std::string msg = spruce_emu::launch(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]),
                                               smem_bytes, e.bind(args), order, seed);
    if (msg.empty()) return 0;
    snprintf(err, err_len, "%s: %s", name, msg.c_str());
    return 2;
  }
  snprintf(err, err_len, "unknown kernel %s", name);
  return 1;
}
