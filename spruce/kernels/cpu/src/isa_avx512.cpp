// The kernels for AVX-512 F/BW/DQ/VL (16 lanes), from the same headers as isa_avx2.cpp. Called only when the
// CPU reports all four (cpu_has_isa).
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi,bmi2,f16c,popcnt")
#define SPRUCE_ISA_NS avx512
#define SPRUCE_SIMD_HEADER "simd_avx512.h"
#include "isa_body.h"
