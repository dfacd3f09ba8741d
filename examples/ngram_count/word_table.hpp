// word_table.hpp - ngram_count's word -> count hash table: flat, and cheap to
// send between processes and to add up.
//
// Why not std::unordered_map: a profile of `ngram_count --workers 1` on a
// 100 MB generated file showed the parent spending more CPU on partial maps
// than the worker spent counting words into them. Each partial was written
// entry by entry (cereal), decoded into freshly allocated strings, and
// inserted node by node into the parent's map, a cache miss or three per
// word while the worker streamed the file through the same cache. This table
// keeps all words' bytes in one array and the entries (with their hashes) in
// another: it is sent as its entries and bytes as they are in memory, a
// received one is added to another by its stored hashes without being
// indexed itself, and no word is ever hashed twice.
#pragma once

#include <cereal/cereal.hpp>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ngram {

/// A hash table from words to 64-bit counts: open addressing with linear
/// probing; words are only added, never removed.
class word_table {
  // key: the word's offset in bytes_ (upper 40 bits) and length (lower 24).
  struct slot {
    std::uint64_t hash;
    std::uint64_t count;
    std::uint64_t key;
    friend bool operator==(const slot&, const slot&) = default;
  };
  static constexpr unsigned length_bits = 24;
  static constexpr std::uint64_t max_length = (std::uint64_t{1} << length_bits) - 1;
  static constexpr std::uint64_t empty_key = ~std::uint64_t{0};  // an offset no table reaches
  // Grow past 70% full: linear probing slows down quickly above that.
  static constexpr std::size_t max_load_num = 7, max_load_den = 10;

 public:
  /// Adds `count` to the count of `word`, inserting it first if absent.
  void add(std::string_view word, std::uint64_t count) { add_hashed(word, hash_of(word), count); }

  /// The count of `word`; nullptr if absent.
  [[nodiscard]] const std::uint64_t* find(std::string_view word) const {
    if (slots_.empty()) return nullptr;
    const slot& s = probe(word, hash_of(word));
    return s.key == empty_key ? nullptr : &s.count;
  }

  /// The count of `word`, 0 if absent.
  [[nodiscard]] std::uint64_t count_of(std::string_view word) const {
    const std::uint64_t* c = find(word);
    return c ? *c : 0;
  }

  /// How many distinct words.
  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] bool empty() const noexcept { return size_ == 0; }

  /// Calls `f(word, count)` for every entry, in no particular order.
  template <class F>
  void for_each(F&& f) const {
    for (const slot& s : slots_)
      if (s.key != empty_key) f(word_of(s.key), s.count);
  }

  /// Adds every entry of `other` to this table. The stored hashes are reused.
  void add_all(const word_table& other) {
    for (const slot& s : other.slots_)
      if (s.key != empty_key) add_hashed(other.word_of(s.key), s.hash, s.count);
  }

  friend void swap(word_table& a, word_table& b) noexcept {
    a.slots_.swap(b.slots_);
    a.bytes_.swap(b.bytes_);
    std::swap(a.size_, b.size_);
  }

  /// Same words with the same counts (however they were inserted).
  friend bool operator==(const word_table& a, const word_table& b) {
    if (a.size_ != b.size_) return false;
    for (const slot& s : a.slots_)
      if (s.key != empty_key) {
        const std::uint64_t* c = b.find(a.word_of(s.key));
        if (!c || *c != s.count) return false;
      }
    return true;
  }

  /// Writes the entries (hash, count, where the word is) as they are in
  /// memory, without the free slots between them, then the word bytes.
  template <class Archive>
  void save(Archive& ar) const {
    ar(cereal::make_size_tag(static_cast<cereal::size_type>(size_)));
    for (const slot& s : slots_)  // straight into the archive: no compacted copy to fault in first
      if (s.key != empty_key) ar(cereal::binary_data(&s, sizeof s));
    ar(cereal::make_size_tag(static_cast<cereal::size_type>(bytes_.size())));
    ar(cereal::binary_data(bytes_.data(), bytes_.size()));
  }

  /// A table as it arrives from another process: its entries, read in one
  /// piece and not yet indexed, and its word bytes. Adding it to a table
  /// needs no index of its own; one that is kept becomes a word_table.
  class arrival {
   public:
    /// Reads what word_table::save wrote. Every entry is checked to lie
    /// within the word bytes, so that a corrupt payload cannot make a lookup
    /// read out of bounds.
    template <class Archive>
    void load(Archive& ar) {
      cereal::size_type size = 0, bytes = 0;
      ar(cereal::make_size_tag(size));  // coshard's archive checks counts against the bytes left
      entries_.resize(static_cast<std::size_t>(size));
      ar(cereal::binary_data(entries_.data(), entries_.size() * sizeof(slot)));
      ar(cereal::make_size_tag(bytes));
      bytes_.resize(static_cast<std::size_t>(bytes));
      ar(cereal::binary_data(bytes_.data(), bytes_.size()));
      for (const slot& s : entries_)
        if (s.key == empty_key || (s.key >> length_bits) + (s.key & max_length) > bytes_.size())
          throw std::runtime_error("corrupt word table: a word lies outside its bytes");
    }
    [[nodiscard]] bool empty() const noexcept { return entries_.empty(); }
    [[nodiscard]] std::size_t size() const noexcept { return entries_.size(); }
    friend bool operator==(const arrival&, const arrival&) = default;

   private:
    friend class word_table;
    std::vector<slot> entries_;
    std::vector<char> bytes_;
  };

  word_table() = default;

  /// Takes over an arrived table's words and indexes its entries by their
  /// stored hashes (a table holds each word once: no words are compared).
  explicit word_table(arrival&& a) : bytes_(std::move(a.bytes_)), size_(a.entries_.size()) {
    rehash_from(a.entries_, capacity_for(size_));
    a.entries_.clear();
  }

  /// Adds every entry of an arrived table to this one.
  void add_all(const arrival& other) {
    // The hashes are known ahead: fetching the slots a few entries early
    // overlaps the cache misses of a large table instead of taking them in turn.
    constexpr std::size_t ahead = 8;
    const std::vector<slot>& in = other.entries_;
    for (std::size_t i = 0; i < in.size(); ++i) {
      if (i + ahead < in.size() && !slots_.empty())
        __builtin_prefetch(&slots_[in[i + ahead].hash & (slots_.size() - 1)]);
      add_hashed(word_of(other.bytes_, in[i].key), in[i].hash, in[i].count);
    }
  }

 private:
  static std::uint64_t hash_of(std::string_view word) { return std::hash<std::string_view>{}(word); }

  static std::size_t capacity_for(std::size_t n) {
    return std::bit_ceil(std::max<std::size_t>(16, n * max_load_den / max_load_num + 1));
  }

  static std::string_view word_of(const std::vector<char>& bytes, std::uint64_t key) {
    return {bytes.data() + (key >> length_bits), static_cast<std::size_t>(key & max_length)};
  }
  [[nodiscard]] std::string_view word_of(std::uint64_t key) const { return word_of(bytes_, key); }

  // The slot holding `word`, or the empty slot where it would go.
  // Requires a non-empty table with at least one free slot.
  [[nodiscard]] const slot& probe(std::string_view word, std::uint64_t hash) const {
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t i = hash & mask;; i = (i + 1) & mask) {
      const slot& s = slots_[i];
      if (s.key == empty_key || (s.hash == hash && word_of(s.key) == word)) return s;
    }
  }

  void add_hashed(std::string_view word, std::uint64_t hash, std::uint64_t count) {
    if ((size_ + 1) * max_load_den > slots_.size() * max_load_num) rehash(capacity_for(size_ + 1));
    slot& s = const_cast<slot&>(probe(word, hash));
    if (s.key != empty_key) {
      s.count += count;
      return;
    }
    if (word.size() > max_length) throw std::length_error("word_table: a word of 16 MiB or more");
    if (bytes_.size() >> (64 - length_bits)) throw std::length_error("word_table: a terabyte of words");
    s = {hash, count, std::uint64_t{bytes_.size()} << length_bits | word.size()};
    bytes_.insert(bytes_.end(), word.begin(), word.end());
    ++size_;
  }

  void rehash(std::size_t capacity) {
    std::vector<slot> old;
    old.swap(slots_);
    rehash_from(old, capacity);
  }

  // Puts every used entry of `from` into a fresh slot array of `capacity`.
  void rehash_from(const std::vector<slot>& from, std::size_t capacity) {
    slots_.assign(capacity, slot{0, 0, empty_key});
    const std::size_t mask = capacity - 1;
    for (const slot& s : from) {
      if (s.key == empty_key) continue;
      std::size_t i = s.hash & mask;
      while (slots_[i].key != empty_key) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }

  std::vector<slot> slots_;  // a power of two of them, or none
  std::vector<char> bytes_;  // every word's bytes, one after another
  std::size_t size_ = 0;
};

}  // namespace ngram
