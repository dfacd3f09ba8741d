// Tests of coshard/outcome.hpp: one item's value or failure.
#include "coshard/outcome.hpp"

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>

TEST_CASE("an outcome holds a value or an error, never both") {
  coshard::outcome<std::string> good(std::string("fine"));
  CHECK(good.ok());
  CHECK(static_cast<bool>(good));
  CHECK(good.value() == "fine");
  CHECK(good.error() == nullptr);

  coshard::outcome<std::string> bad(std::make_exception_ptr(std::logic_error("broken")));
  CHECK_FALSE(bad.ok());
  CHECK(bad.error() != nullptr);
  CHECK_THROWS_WITH(bad.value(), "broken");
  CHECK_THROWS_AS(std::move(bad).value(), std::logic_error);
}

TEST_CASE("a value can be moved out of an outcome") {
  coshard::outcome<std::string> o(std::string(100, 'x'));
  std::string taken = std::move(o).value();
  CHECK(taken.size() == 100);
}
