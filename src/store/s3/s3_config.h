// Where an s3:// store lives and who we are there: endpoint, region, addressing style and
// credentials, resolved the way the AWS CLI and SDKs resolve them, so a user's existing setup
// works unchanged. Precedence, first match wins, per setting:
//
//   1. the URL's query: s3://bucket/prefix?endpoint=http://127.0.0.1:7480&region=us-east-1
//      &profile=NAME&addressing=path|virtual&access_key_id=..&secret_access_key=..
//      &create_bucket=true
//   2. environment: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS_REGION, AWS_DEFAULT_REGION,
//      AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE
//   3. the profile (AWS_PROFILE, else "default") in AWS_SHARED_CREDENTIALS_FILE
//      (~/.aws/credentials: aws_access_key_id, aws_secret_access_key, aws_session_token) and
//      AWS_CONFIG_FILE (~/.aws/config, section "[profile NAME]" or "[default]": region,
//      endpoint_url, and the nested "s3 =" block's endpoint_url and addressing_style)
//
// Defaults: region us-east-1; no endpoint -> https://s3.<region>.amazonaws.com with
// virtual-hosted addressing (bucket.s3...); a custom endpoint -> path-style addressing
// (endpoint/bucket/key), which Ceph RGW, MinIO and other self-hosted servers expect. No
// credentials anywhere -> anonymous (unsigned) requests, for public buckets.
//
// Pure given its Environment; thread-safe.
#ifndef GRANARY_STORE_S3_S3_CONFIG_H_
#define GRANARY_STORE_S3_S3_CONFIG_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "granary/status.h"
#include "store/s3/sigv4.h"
#include "store/url.h"

namespace granary::s3 {

struct S3Settings {
  std::string bucket;
  std::string prefix;    // key prefix inside the bucket ("" or ending without '/')
  std::string scheme;    // "http" or "https"
  std::string host;      // "127.0.0.1:7480", "s3.us-east-1.amazonaws.com"
  std::string region;
  bool path_style = true;
  Credentials credentials;  // empty access key: anonymous
  std::string profile;      // the profile consulted ("default" unless chosen)
  // URL create_bucket=true: create the bucket at open when it does not exist. Off by default:
  // on shared object storage buckets are usually made by an administrator, with a policy.
  bool create_bucket = false;
};

// What the resolution reads besides the URL; tests supply their own.
struct Environment {
  std::function<std::optional<std::string>(const char*)> getenv;  // nullopt when unset
  std::function<std::optional<std::string>(const std::string&)> read_file;  // nullopt: absent
  std::string home;  // for ~/.aws
  static Environment Process();  // the real environment and file system
};

// Resolves `url` (an s3:// StoreUrl). InvalidArgument naming the URL for an unknown query key,
// an endpoint that is not http(s)://host[:port], or addressing other than path/virtual;
// NotFound naming the files when an explicitly chosen profile (URL or AWS_PROFILE) is in
// neither file; InvalidArgument when only one of access key and secret is found.
Result<S3Settings> ResolveS3Settings(const StoreUrl& url, const Environment& env);

// The URL for messages and url(): secret_access_key and session_token dropped.
std::string RedactedUrl(const StoreUrl& url);

// INI as the AWS files write it: "[section]", "key = value", '#'/';' comments, and indented
// "key = value" lines under a "name =" line stored as "name.key". Sections map to their keys.
std::map<std::string, std::map<std::string, std::string>> ParseAwsIni(std::string_view text);

}  // namespace granary::s3

#endif  // GRANARY_STORE_S3_S3_CONFIG_H_
