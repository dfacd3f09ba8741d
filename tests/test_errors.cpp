// Tests of coshard/errors.hpp and coshard/exception_types.hpp: what each error
// carries and says, and the types a task's failure is rebuilt as.
#include "coshard/errors.hpp"
#include "coshard/exception_types.hpp"

#include <catch2/catch.hpp>

#include <filesystem>
#include <string>
#include <system_error>

namespace {

// Describes `thrower`'s exception in the worker's way and rebuilds it in the
// caller's, as a failing item of input index 1234 in worker pid 4321 travels.
template <class Throw>
std::exception_ptr round_trip(Throw thrower) {
  coshard::detail::exception_description d;
  try {
    thrower();
  } catch (...) {
    d = coshard::detail::describe_current_exception();
  }
  return coshard::detail::make_task_error(d, 1234, 4321);
}

const coshard::task_error& details(const std::exception& e) {
  const auto* t = coshard::task_error_of(e);
  REQUIRE(t != nullptr);
  return *t;
}

struct parse_error : std::runtime_error {
  parse_error(const std::string& what, int line) : std::runtime_error(what), line(line) {}
  int line;
};

struct quota_exceeded : std::exception {
  explicit quota_exceeded(std::string who) : who(std::move(who)) {}
  const char* what() const noexcept override { return who.c_str(); }
  std::string who;
};
struct disk_quota_exceeded : quota_exceeded {
  using quota_exceeded::quota_exceeded;
};

}  // namespace

TEST_CASE("task_error keeps every field and summarises them in what()") {
  const auto error = round_trip([] { throw std::out_of_range("index 9 too big"); });
  try {
    std::rethrow_exception(error);
  } catch (const coshard::task_error& e) {
    CHECK(e.type_name() == "std::out_of_range");
    CHECK(e.message() == "index 9 too big");
    CHECK(e.index() == 1234);
    CHECK(e.worker_pid() == 4321);
    CHECK(std::string(e.what()) ==
          "coshard: task at input index 1234 threw std::out_of_range: index 9 too big (worker pid 4321)");
  }
}

TEST_CASE("task_error of a non-standard throw has an empty message and is a std::runtime_error") {
  const auto error = round_trip([] { throw 42; });
  try {
    std::rethrow_exception(error);
  } catch (const std::runtime_error& e) {
    const auto& t = details(e);
    CHECK(t.type_name() == "int");
    CHECK(t.message().empty());
    CHECK(std::string(e.what()) == "coshard: task at input index 1234 threw int (worker pid 4321)");
  }
}

TEST_CASE("a standard exception arrives as its own type, a task_error and a std::exception at once") {
  const auto error = round_trip([] { throw std::invalid_argument("no 7 please"); });
  CHECK_THROWS_AS(std::rethrow_exception(error), std::invalid_argument);
  CHECK_THROWS_AS(std::rethrow_exception(error), std::logic_error);
  CHECK_THROWS_AS(std::rethrow_exception(error), std::exception);
  CHECK_THROWS_AS(std::rethrow_exception(error), coshard::task_error);
  CHECK_THROWS_AS(std::rethrow_exception(error), coshard::item_error);
  try {
    std::rethrow_exception(error);
  } catch (const std::invalid_argument& e) {
    // The same summary through either base.
    CHECK(std::string(e.what()) == details(e).what());
    CHECK(details(e).message() == "no 7 please");
    CHECK(details(e).index() == 1234);
  }
  // Not a runtime_error: the object is a logic_error, and has one std::exception.
  bool caught_as_runtime_error = false;
  try {
    std::rethrow_exception(error);
  } catch (const std::runtime_error&) {
    caught_as_runtime_error = true;
  } catch (const std::exception&) {
  }
  CHECK_FALSE(caught_as_runtime_error);
}

TEST_CASE("each standard exception type is rebuilt as itself") {
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::domain_error("d"); })), std::domain_error);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::length_error("l"); })), std::length_error);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::range_error("r"); })), std::range_error);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::overflow_error("o"); })), std::overflow_error);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::underflow_error("u"); })), std::underflow_error);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::bad_alloc(); })), std::bad_alloc);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::bad_array_new_length(); })),
                  std::bad_array_new_length);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::bad_optional_access(); })),
                  std::bad_optional_access);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::bad_function_call(); })),
                  std::bad_function_call);
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw std::exception(); })), coshard::task_error);
}

TEST_CASE("an unregistered class arrives as its nearest standard base, named by its own type") {
  const auto error = round_trip([] { throw parse_error("line 3: unexpected '}'", 3); });
  try {
    std::rethrow_exception(error);
  } catch (const std::runtime_error& e) {
    CHECK(details(e).type_name() == "(anonymous namespace)::parse_error");
    CHECK(details(e).message() == "line 3: unexpected '}'");
  }
}

TEST_CASE("a system_error keeps its code; a filesystem_error arrives as a system_error") {
  const auto error = round_trip([] {
    throw std::filesystem::filesystem_error("open", "/nonexistent",
                                            std::make_error_code(std::errc::no_such_file_or_directory));
  });
  try {
    std::rethrow_exception(error);
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::errc::no_such_file_or_directory);
    CHECK(details(e).type_name() == "std::filesystem::__cxx11::filesystem_error");
  }
  // A category the caller cannot name: the runtime_error it also is.
  const auto iostream = round_trip([] { throw std::system_error(std::io_errc::stream, "read"); });
  CHECK_THROWS_AS(std::rethrow_exception(iostream), std::runtime_error);
  CHECK_THROWS_AS(std::rethrow_exception(iostream), coshard::task_error);
}

TEST_CASE("a registered user type arrives as itself; a derived one registered later as the derived one") {
  coshard::register_exception<quota_exceeded>();
  coshard::register_exception<disk_quota_exceeded>([](const std::string& m) { return disk_quota_exceeded(m); });
  const auto error = round_trip([] { throw quota_exceeded("alice"); });
  try {
    std::rethrow_exception(error);
  } catch (const quota_exceeded& e) {
    CHECK(e.who == "alice");  // built from the task's what()
    CHECK(details(e).index() == 1234);
  }
  CHECK_THROWS_AS(std::rethrow_exception(round_trip([] { throw disk_quota_exceeded("bob"); })), disk_quota_exceeded);
}

TEST_CASE("worker_crashed, timeout_error and item_cancelled are std::runtime_errors and item_errors") {
  const coshard::worker_crashed crash(5, 77, 11, -1, "killed by SIGSEGV");
  CHECK(crash.index() == 5);
  CHECK(crash.term_signal() == 11);
  CHECK(std::string(crash.what()) == "coshard: input index 5 crashed its worker (pid 77 killed by SIGSEGV)");
  CHECK(std::string(static_cast<const coshard::item_error&>(crash).what()) == crash.what());
  CHECK_THROWS_AS(throw coshard::timeout_error("late", 1, 2), coshard::item_error);
  CHECK_THROWS_AS(throw coshard::timeout_error("late", 1, 2), std::runtime_error);
  CHECK_THROWS_AS(throw coshard::item_cancelled("stopped", 1, 2), coshard::item_error);
}

TEST_CASE("error hierarchy lets callers catch by category") {
  CHECK_THROWS_AS(throw coshard::serialization_error("x"), coshard::pool_error);
  CHECK_THROWS_AS(throw coshard::pool_error("x"), std::runtime_error);
}

namespace {
struct config_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
}  // namespace

TEST_CASE("a registered type the caller does not know arrives as its nearest standard base") {
  coshard::register_exception<config_error>();
  coshard::detail::exception_description d;
  try {
    throw config_error("port missing");
  } catch (...) {
    d = coshard::detail::describe_current_exception();
  }
  CHECK(d.rebuild_as == "(anonymous namespace)::config_error");
  CHECK(d.standard_base == "std::invalid_argument");
  d.rebuild_as = "a type only the worker registered";
  try {
    std::rethrow_exception(coshard::detail::make_task_error(d, 3, 4));
  } catch (const std::invalid_argument& e) {
    CHECK(coshard::task_error_of(e)->message() == "port missing");
  }
}
