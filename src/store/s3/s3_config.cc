#include "store/s3/s3_config.h"

#include <cctype>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace granary::s3 {
namespace {

std::string Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(" \t\r");
  if (b == std::string_view::npos) return "";
  const size_t e = s.find_last_not_of(" \t\r");
  return std::string(s.substr(b, e - b + 1));
}

// "http(s)://host[:port]" -> scheme and host; false if it is not that.
bool SplitEndpoint(std::string_view endpoint, std::string* scheme, std::string* host) {
  while (endpoint.ends_with('/')) endpoint.remove_suffix(1);
  for (std::string_view s : {"http", "https"}) {
    const std::string p = std::string(s) + "://";
    if (endpoint.starts_with(p)) {
      std::string_view rest = endpoint.substr(p.size());
      if (rest.empty() || rest.find_first_of("/?#@ ") != std::string_view::npos) return false;
      *scheme = s;
      *host = std::string(rest);
      return true;
    }
  }
  return false;
}

}  // namespace

std::map<std::string, std::map<std::string, std::string>> ParseAwsIni(std::string_view text) {
  std::map<std::string, std::map<std::string, std::string>> out;
  std::string section, parent;
  std::istringstream in{std::string(text)};
  for (std::string line; std::getline(in, line);) {
    const bool indented = !line.empty() && (line[0] == ' ' || line[0] == '\t');
    const std::string t = Trim(line);
    if (t.empty() || t[0] == '#' || t[0] == ';') continue;
    if (t.front() == '[' && t.back() == ']') {
      section = Trim(t.substr(1, t.size() - 2));
      parent.clear();
      out[section];
      continue;
    }
    const size_t eq = t.find('=');
    if (eq == std::string::npos || section.empty()) continue;
    const std::string key = Trim(t.substr(0, eq));
    const std::string value = Trim(t.substr(eq + 1));
    if (indented && !parent.empty()) {
      out[section][parent + "." + key] = value;
      continue;
    }
    parent = value.empty() ? key : "";
    if (!value.empty()) out[section][key] = value;
  }
  return out;
}

Environment Environment::Process() {
  Environment env;
  env.getenv = [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (v == nullptr || *v == '\0') return std::nullopt;
    return std::string(v);
  };
  env.read_file = [](const std::string& path) -> std::optional<std::string> {
    std::ifstream in(path, std::ios::binary);
    if (!in) return std::nullopt;
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  };
  const char* home = std::getenv("HOME");
  env.home = home != nullptr ? home : "";
  return env;
}

std::string RedactedUrl(const StoreUrl& url) {
  StoreUrl shown = url;
  std::erase_if(shown.query, [](const auto& kv) {
    return kv.first == "secret_access_key" || kv.first == "session_token";
  });
  return shown.ToString();
}

Result<S3Settings> ResolveS3Settings(const StoreUrl& url, const Environment& env) {
  const std::string name = RedactedUrl(url);
  auto bad = [&](const std::string& why) {
    return InvalidArgumentError("S3 URL " + name + ": " + why);
  };
  S3Settings s;
  s.bucket = url.location;
  s.prefix = url.path;
  while (s.prefix.ends_with('/')) s.prefix.pop_back();

  std::map<std::string, std::string> q;
  for (const auto& [k, v] : url.query) {
    static const char* kKnown[] = {"endpoint",      "region",           "profile",
                                   "addressing",    "access_key_id",    "secret_access_key",
                                   "session_token", "create_bucket"};
    bool known = false;
    for (const char* k2 : kKnown) known |= k == k2;
    if (!known) {
      return bad("unknown parameter '" + k +
                 "' (known: endpoint, region, profile, addressing, access_key_id, "
                 "secret_access_key, session_token, create_bucket)");
    }
    q[k] = UriDecode(v);
  }
  auto from = [&](const char* query_key,
                  std::initializer_list<const char*> env_keys) -> std::optional<std::string> {
    if (auto it = q.find(query_key); it != q.end() && !it->second.empty()) return it->second;
    for (const char* e : env_keys) {
      if (auto v = env.getenv(e)) return v;
    }
    return std::nullopt;
  };

  if (auto it = q.find("create_bucket"); it != q.end()) {
    if (it->second == "true" || it->second == "1") {
      s.create_bucket = true;
    } else if (it->second != "false" && it->second != "0") {
      return bad("create_bucket must be true or false, not '" + it->second + "'");
    }
  }

  // The profile's two files.
  std::optional<std::string> chosen = from("profile", {"AWS_PROFILE"});
  s.profile = chosen.value_or("default");
  const std::string creds_path =
      env.getenv("AWS_SHARED_CREDENTIALS_FILE").value_or(env.home + "/.aws/credentials");
  const std::string config_path = env.getenv("AWS_CONFIG_FILE").value_or(env.home + "/.aws/config");
  std::map<std::string, std::string> creds_file, config_file;
  bool profile_found = false;
  if (auto text = env.read_file(creds_path)) {
    auto ini = ParseAwsIni(*text);
    if (auto it = ini.find(s.profile); it != ini.end()) {
      creds_file = it->second;
      profile_found = true;
    }
  }
  if (auto text = env.read_file(config_path)) {
    auto ini = ParseAwsIni(*text);
    const std::string section = s.profile == "default" ? "default" : "profile " + s.profile;
    if (auto it = ini.find(section); it != ini.end()) {
      config_file = it->second;
      profile_found = true;
    }
  }
  if (chosen && !profile_found) {
    return NotFoundError("S3 URL " + name + ": profile '" + s.profile + "' is in neither " +
                         creds_path + " nor " + config_path);
  }
  auto file_value = [](const std::map<std::string, std::string>& m,
                       const char* key) -> std::optional<std::string> {
    if (auto it = m.find(key); it != m.end() && !it->second.empty()) return it->second;
    return std::nullopt;
  };

  // Region and endpoint.
  s.region = from("region", {"AWS_REGION", "AWS_DEFAULT_REGION"})
                 .value_or(file_value(config_file, "region").value_or("us-east-1"));
  std::optional<std::string> endpoint =
      from("endpoint", {"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"});
  if (!endpoint) endpoint = file_value(config_file, "s3.endpoint_url");
  if (!endpoint) endpoint = file_value(config_file, "endpoint_url");
  if (endpoint) {
    if (!SplitEndpoint(*endpoint, &s.scheme, &s.host)) {
      return bad("endpoint '" + *endpoint + "' is not http(s)://host[:port]");
    }
    s.path_style = true;
  } else {
    s.scheme = "https";
    s.host = "s3." + s.region + ".amazonaws.com";
    s.path_style = false;
  }
  std::optional<std::string> addressing = q.count("addressing")
                                              ? std::optional(q["addressing"])
                                              : file_value(config_file, "s3.addressing_style");
  if (addressing) {
    if (*addressing == "path") {
      s.path_style = true;
    } else if (*addressing == "virtual") {
      s.path_style = false;
    } else if (*addressing != "auto") {
      return bad("addressing must be path or virtual, not '" + *addressing + "'");
    }
  }

  // Credentials: the URL, the environment and the credentials file each as a whole.
  auto pick = [&](std::optional<std::string> id, std::optional<std::string> secret,
                  std::optional<std::string> token, const std::string& where) -> Status {
    if (!id && !secret) return Status::OK();
    if (!id || !secret) {
      return InvalidArgumentError("S3 URL " + name + ": " + where +
                                  " has only one of the access key id and the secret key");
    }
    s.credentials = {*id, *secret, token.value_or("")};
    return Status::OK();
  };
  auto qv = [&](const char* k) -> std::optional<std::string> {
    if (auto it = q.find(k); it != q.end() && !it->second.empty()) return it->second;
    return std::nullopt;
  };
  GRANARY_RETURN_IF_ERROR(pick(qv("access_key_id"), qv("secret_access_key"), qv("session_token"),
                               "the URL"));
  if (s.credentials.access_key_id.empty()) {
    GRANARY_RETURN_IF_ERROR(pick(env.getenv("AWS_ACCESS_KEY_ID"),
                                 env.getenv("AWS_SECRET_ACCESS_KEY"),
                                 env.getenv("AWS_SESSION_TOKEN"), "the environment"));
  }
  if (s.credentials.access_key_id.empty()) {
    GRANARY_RETURN_IF_ERROR(pick(file_value(creds_file, "aws_access_key_id"),
                                 file_value(creds_file, "aws_secret_access_key"),
                                 file_value(creds_file, "aws_session_token"), creds_path));
  }
  if (s.credentials.access_key_id.empty()) {  // the config file may hold keys too
    GRANARY_RETURN_IF_ERROR(pick(file_value(config_file, "aws_access_key_id"),
                                 file_value(config_file, "aws_secret_access_key"),
                                 file_value(config_file, "aws_session_token"), config_path));
  }
  return s;
}

}  // namespace granary::s3
