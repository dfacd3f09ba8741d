// coshard/coshard.hpp - everything a user needs in one include.
#pragma once

#include "coshard/errors.hpp"
#include "coshard/exception_types.hpp"
#include "coshard/keyed_reduce.hpp"
#include "coshard/outcome.hpp"
#include "coshard/pool_options.hpp"
#include "coshard/process_pool.hpp"
#include "coshard/pool_stats.hpp"
#include "coshard/progress.hpp"
#include "coshard/progress_bar.hpp"
#include "coshard/serialization.hpp"
#include "coshard/serve_if_worker.hpp"
#include "coshard/shippable_function.hpp"
#include "coshard/worker_output.hpp"
