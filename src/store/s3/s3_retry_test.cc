#include "store/s3/s3_retry.h"

#include <curl/curl.h>

#include <gtest/gtest.h>

namespace granary::s3 {
namespace {

TEST(S3RetryTest, ClassifiesResponsesAndTransportFailures) {
  EXPECT_EQ(Classify(CURLE_OK, 200, ""), Verdict::kDone);
  EXPECT_EQ(Classify(CURLE_OK, 206, ""), Verdict::kDone);
  for (int status : {408, 429, 500, 502, 503, 504}) {
    EXPECT_EQ(Classify(CURLE_OK, status, ""), Verdict::kRetry) << status;
  }
  for (int status : {400, 403, 404, 409, 412, 416}) {
    EXPECT_EQ(Classify(CURLE_OK, status, ""), Verdict::kFail) << status;
  }
  EXPECT_EQ(Classify(CURLE_OK, 503, "SlowDown"), Verdict::kRetry);
  EXPECT_EQ(Classify(CURLE_OK, 400, "RequestTimeout"), Verdict::kRetry);
  EXPECT_EQ(Classify(CURLE_OK, 200, "InternalError"), Verdict::kRetry);  // 200 + <Error> body
  EXPECT_EQ(Classify(CURLE_OK, 403, "AccessDenied"), Verdict::kFail);
  for (int c : {CURLE_COULDNT_CONNECT, CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_GOT_NOTHING,
                CURLE_PARTIAL_FILE, CURLE_OPERATION_TIMEDOUT}) {
    EXPECT_EQ(Classify(c, 0, ""), Verdict::kRetry) << c;
  }
  EXPECT_EQ(Classify(CURLE_PEER_FAILED_VERIFICATION, 0, ""), Verdict::kFail);
  EXPECT_EQ(Classify(CURLE_URL_MALFORMAT, 0, ""), Verdict::kFail);
}

TEST(S3RetryTest, FullJitterBackoffStaysUnderTheCeiling) {
  RetryPolicy p;
  for (int attempt = 1; attempt <= 20; ++attempt) {
    const int64_t ceiling = std::min<int64_t>(5000, 50LL << std::min(attempt - 1, 30));
    EXPECT_EQ(Backoff(p, attempt, 0).count(), 0);
    EXPECT_EQ(Backoff(p, attempt, UINT64_MAX - (UINT64_MAX % (ceiling + 1)) - 1).count(), ceiling)
        << attempt;
    for (uint64_t r : {1ULL, 12345ULL, 0xdeadbeefcafeULL}) {
      EXPECT_LE(Backoff(p, attempt, r).count(), ceiling);
    }
  }
}

TEST(S3RetryTest, TimeoutGrowsWithBytes) {
  RetryPolicy p;
  EXPECT_EQ(AttemptTimeout(p, 0).count(), 15000);
  EXPECT_EQ(AttemptTimeout(p, 8u << 20).count(), 17000);  // 8 MiB at 4 MiB/s: 2 s more
  EXPECT_GT(AttemptTimeout(p, 1ull << 30).count(), 250000);
}

}  // namespace
}  // namespace granary::s3
