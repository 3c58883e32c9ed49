// ResolveS3Settings: URL, environment and ~/.aws files in the AWS SDKs' order of precedence.
#include "store/s3/s3_config.h"

#include <map>

#include <gtest/gtest.h>

namespace granary::s3 {
namespace {

struct FakeEnv {
  std::map<std::string, std::string> vars, files;
  Environment Get() const {
    Environment e;
    e.getenv = [this](const char* k) -> std::optional<std::string> {
      auto it = vars.find(k);
      return it == vars.end() ? std::nullopt : std::optional(it->second);
    };
    e.read_file = [this](const std::string& p) -> std::optional<std::string> {
      auto it = files.find(p);
      return it == files.end() ? std::nullopt : std::optional(it->second);
    };
    e.home = "/home/u";
    return e;
  }
};

Result<S3Settings> Resolve(std::string_view url, const FakeEnv& env) {
  Result<StoreUrl> u = ParseStoreUrl(url);
  if (!u.ok()) return u.status();
  return ResolveS3Settings(*u, env.Get());
}

TEST(S3ConfigTest, DefaultsToAwsWithVirtualHostsAndAnonymous) {
  auto s = Resolve("s3://bkt/a/b/", FakeEnv{}).value();
  EXPECT_EQ(s.bucket, "bkt");
  EXPECT_EQ(s.prefix, "a/b");
  EXPECT_EQ(s.scheme, "https");
  EXPECT_EQ(s.host, "s3.us-east-1.amazonaws.com");
  EXPECT_FALSE(s.path_style);
  EXPECT_TRUE(s.credentials.access_key_id.empty());
}

TEST(S3ConfigTest, UrlBeatsEnvironmentBeatsFiles) {
  FakeEnv env;
  env.files["/home/u/.aws/credentials"] =
      "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = FILESECRET\n"
      "[other]\naws_access_key_id=OK\naws_secret_access_key=OS\naws_session_token=OT\n";
  env.files["/home/u/.aws/config"] =
      "[default]\nregion = eu-west-1\ns3 =\n  endpoint_url = http://10.0.0.1:9000\n"
      "  addressing_style = virtual\n[profile other]\nregion=ap-south-1\n";
  auto s = Resolve("s3://b", env).value();
  EXPECT_EQ(s.region, "eu-west-1");
  EXPECT_EQ(s.host, "10.0.0.1:9000");
  EXPECT_EQ(s.scheme, "http");
  EXPECT_FALSE(s.path_style);  // the config's addressing_style
  EXPECT_EQ(s.credentials.access_key_id, "FILEKEY");
  env.vars = {{"AWS_ACCESS_KEY_ID", "ENVKEY"}, {"AWS_SECRET_ACCESS_KEY", "ENVSECRET"},
              {"AWS_REGION", "us-west-2"}, {"AWS_ENDPOINT_URL", "https://minio.local"}};
  s = Resolve("s3://b", env).value();
  EXPECT_EQ(s.credentials.access_key_id, "ENVKEY");
  EXPECT_EQ(s.region, "us-west-2");
  EXPECT_EQ(s.host, "minio.local");
  s = Resolve("s3://b?endpoint=http://127.0.0.1:7480&region=r1&access_key_id=Q&"
              "secret_access_key=S%2Fx&addressing=path", env).value();
  EXPECT_EQ(s.host, "127.0.0.1:7480");
  EXPECT_EQ(s.region, "r1");
  EXPECT_TRUE(s.path_style);
  EXPECT_EQ(s.credentials.access_key_id, "Q");
  EXPECT_EQ(s.credentials.secret_access_key, "S/x");
  env.vars.clear();
  s = Resolve("s3://b?profile=other", env).value();
  EXPECT_EQ(s.credentials.session_token, "OT");
  EXPECT_EQ(s.region, "ap-south-1");
}

TEST(S3ConfigTest, ErrorsNameTheProblem) {
  FakeEnv env;
  EXPECT_EQ(Resolve("s3://b?endpoit=x", env).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Resolve("s3://b?endpoint=127.0.0.1:7480", env).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(Resolve("s3://b?addressing=sideways", env).status().code(),
            StatusCode::kInvalidArgument);
  Status s = Resolve("s3://b?profile=nope", env).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("nope"), std::string::npos) << s.ToString();
  env.vars = {{"AWS_ACCESS_KEY_ID", "only-the-id"}};
  EXPECT_EQ(Resolve("s3://b", env).status().code(), StatusCode::kInvalidArgument);
  // Errors never show a secret from the URL.
  env.vars = {};
  s = Resolve("s3://b?secret_access_key=hush&session_token=tok", env).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message().find("hush"), std::string::npos) << s.ToString();
  EXPECT_EQ(s.message().find("tok"), std::string::npos) << s.ToString();
}

TEST(S3ConfigTest, IniParsing) {
  auto ini = ParseAwsIni("# c\n[a]\nk = v \n; c2\n s3 =\n  x = 1\nafter=2\n[b]\nk=w\n");
  EXPECT_EQ(ini["a"]["k"], "v");
  EXPECT_EQ(ini["a"]["s3.x"], "1");
  EXPECT_EQ(ini["a"]["after"], "2");
  EXPECT_EQ(ini["b"]["k"], "w");
}

}  // namespace
}  // namespace granary::s3
