// Tests of coshard/errors.hpp: what each error carries and says.
#include "coshard/errors.hpp"

#include <catch2/catch.hpp>

#include <string>

TEST_CASE("task_error keeps every field and summarises them in what()") {
  const coshard::task_error e("std::out_of_range", "index 9 too big", 1234, 4321);
  CHECK(e.type_name() == "std::out_of_range");
  CHECK(e.message() == "index 9 too big");
  CHECK(e.index() == 1234);
  CHECK(e.worker_pid() == 4321);
  const std::string what = e.what();
  CHECK(what.find("std::out_of_range") != std::string::npos);
  CHECK(what.find("index 9 too big") != std::string::npos);
  CHECK(what.find("1234") != std::string::npos);
  CHECK(what.find("4321") != std::string::npos);
}

TEST_CASE("task_error of a non-standard throw has an empty message") {
  const coshard::task_error e("int", "", 7, 99);
  CHECK(e.message().empty());
  CHECK(std::string(e.what()) == "coshard: task at input index 7 threw int (worker pid 99)");
}

TEST_CASE("error hierarchy lets callers catch by category") {
  CHECK_THROWS_AS(throw coshard::serialization_error("x"), coshard::pool_error);
  CHECK_THROWS_AS(throw coshard::pool_error("x"), std::runtime_error);
  CHECK_THROWS_AS(throw coshard::task_error("t", "m", 0, 1), std::runtime_error);
}
