// Host emulation: see heron_host_shim.h.
#pragma once
#include "heron_host_shim.h"
