#include "store/s3/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cctype>
#include <ctime>

namespace granary::s3 {
namespace {

constexpr char kHex[] = "0123456789abcdef";
constexpr char kHexUpper[] = "0123456789ABCDEF";

std::string Hex(const unsigned char* data, size_t n) {
  std::string out(2 * n, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[data[i] >> 4];
    out[2 * i + 1] = kHex[data[i] & 15];
  }
  return out;
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Leading/trailing spaces removed, inner runs of spaces (and tabs) collapsed to one space.
std::string TrimCollapse(std::string_view s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::string Hmac(std::string_view key, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<char*>(out), len);
}

}  // namespace

std::string UriEncode(std::string_view s, bool encode_slash) {
  std::string out;
  out.reserve(s.size() * 3);
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' ||
        (c == '/' && !encode_slash)) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHexUpper[c >> 4];
      out += kHexUpper[c & 15];
    }
  }
  return out;
}

std::string UriDecode(std::string_view s) {
  auto hex = [](char c) {
    const int u = std::tolower(static_cast<unsigned char>(c));
    return std::isdigit(u) ? u - '0' : u - 'a' + 10;
  };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
      i += 2;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string Sha256Hex(std::span<const std::byte> data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, EVP_sha256(), nullptr);
  return Hex(out, len);
}

std::string AmzDate(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

Canonical CanonicalRequest(const SignRequest& request) {
  std::vector<std::pair<std::string, std::string>> query;
  query.reserve(request.query.size());
  for (const auto& [k, v] : request.query) {
    query.emplace_back(UriEncode(k, true), UriEncode(v, true));
  }
  std::sort(query.begin(), query.end());
  // Headers by lowercase name (stable, so repeated names keep their order), then joined.
  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& [k, v] : request.headers) headers.emplace_back(Lower(k), TrimCollapse(v));
  std::stable_sort(headers.begin(), headers.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  Canonical out;
  std::string& r = out.request;
  r = request.method + "\n" + (request.path.empty() ? "/" : request.path) + "\n";
  for (size_t i = 0; i < query.size(); ++i) {
    r += (i ? "&" : "") + query[i].first + "=" + query[i].second;
  }
  r += "\n";
  for (size_t i = 0; i < headers.size(); ++i) {
    if (i > 0 && headers[i].first == headers[i - 1].first) {
      r.back() = ',';  // replace the previous line's '\n'
      r += headers[i].second + "\n";
      continue;
    }
    r += headers[i].first + ":" + headers[i].second + "\n";
    out.signed_headers += (out.signed_headers.empty() ? "" : ";") + headers[i].first;
  }
  r += "\n" + out.signed_headers + "\n" + request.payload_sha256;
  return out;
}

std::string Sign(SignRequest& request, const Credentials& credentials, const SignScope& scope) {
  request.headers.emplace_back("x-amz-date", scope.amz_date);
  if (!credentials.session_token.empty()) {
    request.headers.emplace_back("x-amz-security-token", credentials.session_token);
  }
  const Canonical canonical = CanonicalRequest(request);
  const std::string date = scope.amz_date.substr(0, 8);
  const std::string credential_scope =
      date + "/" + scope.region + "/" + scope.service + "/aws4_request";
  const std::string string_to_sign = "AWS4-HMAC-SHA256\n" + scope.amz_date + "\n" +
                                     credential_scope + "\n" + Sha256Hex(canonical.request);
  std::string key = Hmac("AWS4" + credentials.secret_access_key, date);
  key = Hmac(key, scope.region);
  key = Hmac(key, scope.service);
  key = Hmac(key, "aws4_request");
  const std::string signature = Hmac(key, string_to_sign);
  return "AWS4-HMAC-SHA256 Credential=" + credentials.access_key_id + "/" + credential_scope +
         ", SignedHeaders=" + canonical.signed_headers + ", Signature=" +
         Hex(reinterpret_cast<const unsigned char*>(signature.data()), signature.size());
}

}  // namespace granary::s3
