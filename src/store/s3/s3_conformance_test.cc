// The store conformance suite against a real S3 server (Ceph RGW under make test; any server
// named by the GRANARY_TEST_S3_* environment, see s3_test_env.h). Each test gets a fresh prefix
// in one bucket; the harness reports as stray anything written outside that prefix, any of the
// driver's own objects left under it, and any multipart upload still pending under it (an
// aborted or dropped writer must leave none).
#include <memory>
#include <string>
#include <vector>

#include "store/s3/s3_store.h"
#include "store/s3/s3_test_env.h"
#include "store/s3/s3_transport.h"
#include "store/s3/s3_xml.h"
#include "store/testing/store_conformance.h"

namespace granary::s3::testing {
namespace {

using granary::testing::ConformanceParam;
using granary::testing::ConformanceParamName;
using granary::testing::StoreConformanceTest;
using granary::testing::StoreHarness;

constexpr char kBucket[] = "granary-conformance";

class S3Harness final : public StoreHarness {
 public:
  static Result<std::unique_ptr<StoreHarness>> Make() {
    std::optional<S3Settings> settings = TestS3Settings(kBucket, UniquePrefix("conf"));
    if (!settings) {
      return FailedPreconditionError("GRANARY_REQUIRE_S3=1 but GRANARY_TEST_S3_ENDPOINT is unset");
    }
    auto h = std::make_unique<S3Harness>();
    h->prefix_ = settings->prefix;
    GRANARY_ASSIGN_OR_RETURN(h->store_, NewS3Store(*settings));
    GRANARY_ASSIGN_OR_RETURN(h->raw_, Transport::Create(*settings));
    return std::unique_ptr<StoreHarness>(std::move(h));
  }

  ~S3Harness() override {
    // Leave the bucket as found: delete what the test wrote.
    for (const std::string& key : RawKeys(prefix_)) {
      Call del;
      del.request.method = "DELETE";
      del.request.key = key;
      raw_->Run(del);
    }
  }

  ObjectStore& store() override { return *store_; }
  size_t max_key_bytes() override { return 1024 - prefix_.size() - 1; }

  std::vector<std::string> StrayEntries() override {
    std::vector<std::string> out;
    for (const std::string& key : RawKeys(prefix_)) {
      const std::string mine = prefix_ + "/";
      if (!key.starts_with(mine)) out.push_back("object outside the prefix: " + key);
      if (key.starts_with(mine + ".granary")) out.push_back("driver object left: " + key);
    }
    Call uploads;
    uploads.request.query = {{"uploads", ""}, {"prefix", prefix_ + "/"}};
    raw_->Run(uploads);
    if (!uploads.response.ok()) {
      out.push_back("cannot list uploads: " + raw_->StatusOf(uploads).ToString());
    } else if (uploads.response.body.find("<UploadId>") != std::string::npos) {
      out.push_back("pending multipart upload: " + uploads.response.body);
    }
    return out;
  }

 private:
  // Every object whose key starts with `prefix` (no '/' appended).
  std::vector<std::string> RawKeys(const std::string& prefix) {
    std::vector<std::string> keys;
    std::string token;
    for (;;) {
      Call list;
      list.request.query = {{"list-type", "2"}, {"encoding-type", "url"}, {"prefix", prefix}};
      if (!token.empty()) list.request.query.emplace_back("continuation-token", token);
      raw_->Run(list);
      if (!list.response.ok()) break;
      Result<ListResult> parsed = ParseListObjectsV2(list.response.body, prefix);
      if (!parsed.ok()) break;
      for (const ListedObject& o : parsed->objects) keys.push_back(o.key);
      if (!parsed->truncated) break;
      token = parsed->next_continuation_token;
    }
    return keys;
  }

  std::string prefix_;
  std::unique_ptr<ObjectStore> store_;
  std::unique_ptr<Transport> raw_;
};

INSTANTIATE_TEST_SUITE_P(Server, StoreConformanceTest,
                         ::testing::Values(ConformanceParam{
                             "S3", [] { return S3Harness::Make(); }, [] { return S3SkipReason(); }}),
                         ConformanceParamName);

}  // namespace
}  // namespace granary::s3::testing
