// Emulator stand-in for the CUDA runtime header (csrc/emulator/runtime.h).
#pragma once
#include "emulator/runtime.h"
