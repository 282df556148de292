// The kernels for AVX2 + FMA (8 lanes). Only this file is compiled for that target; the bindings call it only
// when the CPU has both (cpu_has_isa), so no other code path can meet an AVX2 instruction.
#pragma GCC target("avx2,fma,bmi,bmi2,f16c,popcnt")
#define SPRUCE_ISA_NS avx2
#define SPRUCE_SIMD_HEADER "simd_avx2.h"
#include "isa_body.h"
