#include "store/s3/s3_xml.h"

#include <expat.h>

#include <cctype>
#include <charconv>
#include <ctime>
#include <functional>

#include "store/s3/sigv4.h"

namespace granary::s3 {
namespace {

// Walks an XML document with expat and calls `on_end(path, text)` for every element as it
// closes: `path` is the element names from the root, joined by '/', namespace prefixes dropped
// ("ListBucketResult/Contents/Key"); `text` is the element's own character data. False if the
// document is not well-formed.
class Walker {
 public:
  using OnEnd = std::function<void(const std::string& path, const std::string& text)>;
  explicit Walker(OnEnd on_end) : on_end_(std::move(on_end)) {}

  bool Parse(std::string_view xml) {
    XML_Parser p = XML_ParserCreate(nullptr);
    if (p == nullptr) return false;
    XML_SetUserData(p, this);
    XML_SetElementHandler(p, &Walker::Start, &Walker::End);
    XML_SetCharacterDataHandler(p, &Walker::Text);
    const bool ok = XML_Parse(p, xml.data(), static_cast<int>(xml.size()), 1) == XML_STATUS_OK;
    XML_ParserFree(p);
    return ok;
  }

 private:
  static std::string_view LocalName(const char* name) {
    std::string_view n(name);
    const size_t colon = n.rfind(':');
    return colon == std::string_view::npos ? n : n.substr(colon + 1);
  }
  static void Start(void* self, const char* name, const char**) {
    auto* w = static_cast<Walker*>(self);
    w->lengths_.push_back(w->path_.size());
    if (!w->path_.empty()) w->path_ += '/';
    w->path_ += LocalName(name);
    w->texts_.emplace_back();
  }
  static void End(void* self, const char*) {
    auto* w = static_cast<Walker*>(self);
    w->on_end_(w->path_, w->texts_.back());
    w->texts_.pop_back();
    w->path_.resize(w->lengths_.back());
    w->lengths_.pop_back();
  }
  static void Text(void* self, const char* s, int len) {
    auto* w = static_cast<Walker*>(self);
    if (!w->texts_.empty()) w->texts_.back().append(s, static_cast<size_t>(len));
  }

  OnEnd on_end_;
  std::string path_;
  std::vector<size_t> lengths_;
  std::vector<std::string> texts_;
};

std::string Unquote(std::string s) {
  if (s.size() >= 2 && s.front() == '"' && s.back() == '"') return s.substr(1, s.size() - 2);
  return s;
}

}  // namespace

std::optional<int64_t> ParseIso8601(std::string_view s) {
  std::tm tm{};
  int ms = 0;
  // YYYY-MM-DDTHH:MM:SS[.fff]Z
  if (s.size() < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
      s[16] != ':' || s.back() != 'Z') {
    return std::nullopt;
  }
  auto num = [&](size_t at, size_t n, int* out) {
    return std::from_chars(s.data() + at, s.data() + at + n, *out).ec == std::errc();
  };
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
  if (!num(0, 4, &y) || !num(5, 2, &mo) || !num(8, 2, &d) || !num(11, 2, &h) ||
      !num(14, 2, &mi) || !num(17, 2, &se)) {
    return std::nullopt;
  }
  if (s.size() > 20 && s[19] == '.') {
    const size_t digits = std::min<size_t>(s.size() - 21, 3);
    if (digits > 0 && !num(20, digits, &ms)) return std::nullopt;
    for (size_t i = digits; i < 3; ++i) ms *= 10;
  }
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = se;
  const time_t secs = timegm(&tm);
  return static_cast<int64_t>(secs) * 1'000'000'000 + static_cast<int64_t>(ms) * 1'000'000;
}

Result<ListResult> ParseListObjectsV2(std::string_view xml, std::string_view what) {
  ListResult out;
  ListedObject current;
  bool url_encoded = false, bad_size = false;
  Walker walker([&](const std::string& path, const std::string& text) {
    if (path == "ListBucketResult/Contents/Key") {
      current.key = text;
    } else if (path == "ListBucketResult/Contents/Size") {
      auto r = std::from_chars(text.data(), text.data() + text.size(), current.size_bytes);
      bad_size |= r.ec != std::errc() || r.ptr != text.data() + text.size();
    } else if (path == "ListBucketResult/Contents/LastModified") {
      current.mtime_ns = ParseIso8601(text).value_or(0);
    } else if (path == "ListBucketResult/Contents/ETag") {
      current.etag = Unquote(text);
    } else if (path == "ListBucketResult/Contents") {
      out.objects.push_back(std::move(current));
      current = {};
    } else if (path == "ListBucketResult/CommonPrefixes/Prefix") {
      out.common_prefixes.push_back(text);
    } else if (path == "ListBucketResult/IsTruncated") {
      out.truncated = text == "true";
    } else if (path == "ListBucketResult/NextContinuationToken") {
      out.next_continuation_token = text;
    } else if (path == "ListBucketResult/EncodingType") {
      url_encoded = text == "url";
    }
  });
  if (!walker.Parse(xml)) {
    return DataLossError("S3 listing of " + std::string(what) + ": response is not valid XML");
  }
  if (bad_size) {
    return DataLossError("S3 listing of " + std::string(what) + ": an object's Size is not a "
                         "non-negative integer");
  }
  if (url_encoded) {
    for (ListedObject& o : out.objects) o.key = UriDecode(o.key);
    for (std::string& p : out.common_prefixes) p = UriDecode(p);
  }
  if (out.truncated && out.next_continuation_token.empty()) {
    return DataLossError("S3 listing of " + std::string(what) +
                         ": truncated without a NextContinuationToken");
  }
  return out;
}

std::optional<S3Error> ParseError(std::string_view xml) {
  S3Error e;
  bool is_error = false;
  Walker walker([&](const std::string& path, const std::string& text) {
    if (path == "Error") is_error = true;
    if (path == "Error/Code") e.code = text;
    if (path == "Error/Message") e.message = text;
    if (path == "Error/RequestId") e.request_id = text;
    if (path == "Error/Resource") e.resource = text;
  });
  if (!walker.Parse(xml) || !is_error) return std::nullopt;
  return e;
}

Result<std::string> ParseUploadId(std::string_view xml, std::string_view what) {
  std::string id;
  Walker walker([&](const std::string& path, const std::string& text) {
    if (path == "InitiateMultipartUploadResult/UploadId") id = text;
  });
  if (!walker.Parse(xml) || id.empty()) {
    return DataLossError("S3 multipart upload of " + std::string(what) +
                         ": no UploadId in the server's answer");
  }
  return id;
}

std::string XmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string CompleteMultipartUploadBody(std::span<const std::pair<int, std::string>> parts) {
  std::string out = "<CompleteMultipartUpload>";
  for (const auto& [number, etag] : parts) {
    out += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>\"" +
           XmlEscape(Unquote(etag)) + "\"</ETag></Part>";
  }
  return out + "</CompleteMultipartUpload>";
}

}  // namespace granary::s3
