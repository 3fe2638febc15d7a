/**
 * The Node client against `xiaohe-identity serve` (run by tests/e2e/test_node_client.py):
 * login, validation and a directory lookup through the generated stubs, and the
 * google.rpc error details (ErrorInfo, BadRequest, RetryInfo, QuotaFailure) decoded.
 */
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";

import { badFields, ERROR_DOMAIN, type ErrorDetails, errorDetails, isServiceError, retryAfterSeconds } from "../src/errors";
import { getIdentity, IdentityServices, loginWithPassword, validateToken } from "../src/example";
import { IssueCodeRequest } from "../src/gen/xiaohe/identity/v1/codes";
import { Channel, Purpose, SubjectType } from "../src/gen/xiaohe/identity/v1/common";
import { IdentityField } from "../src/gen/xiaohe/identity/v1/directory";
import { NextStep } from "../src/gen/xiaohe/identity/v1/auth";
import { createClient, devServerFromEnv, freshLoginName, freshPhone, registerPerson } from "./dev";

const PASSWORD = "Qingshan-Rivers-2024";
const server = devServerFromEnv();
const app = new IdentityServices(server.target, server.bootstrap);
const person = { loginName: freshLoginName(), password: PASSWORD, phone: freshPhone() };
let accountId = "";

/** The decoded details of the error `call` rejects with; fails the test if it resolves. */
async function failure(call: () => Promise<unknown>): Promise<ErrorDetails> {
  let caught: unknown;
  try {
    await call();
  } catch (error) {
    caught = error;
  }
  assert.ok(isServiceError(caught), `expected a gRPC error, got ${String(caught)}`);
  return errorDetails(caught as ServiceError);
}

/** Every error names this service's domain and carries a request id. */
function assertErrorInfo(details: ErrorDetails, reason: string): void {
  assert.equal(details.errorInfo?.domain, ERROR_DOMAIN);
  assert.equal(details.reason, reason);
  assert.match(details.errorInfo?.metadata["request_id"] ?? "", /\S/);
}

function issueCode(phone: string): Promise<unknown> {
  const request = IssueCodeRequest.fromPartial({
    channel: Channel.CHANNEL_SMS,
    destination: phone,
    purpose: Purpose.PURPOSE_REGISTER,
  });
  return app.call(app.codes.issueCode.bind(app.codes), request);
}

before(async () => {
  accountId = await registerPerson(app, server.outbox, person);
});

after(() => app.close());

test("login with a password, then validate the access token", async () => {
  const login = await loginWithPassword(app, person.loginName, PASSWORD);
  assert.equal(login.nextStep, NextStep.NEXT_STEP_NONE);
  assert.equal(login.session?.accountId, accountId);
  const validated = await validateToken(app, login.session?.accessToken ?? "");
  assert.equal(validated.valid, true);
  assert.equal(validated.accountId, accountId);
  assert.equal(validated.subjectType, SubjectType.SUBJECT_TYPE_NATURAL_PERSON);
  assert.deepEqual(validated.authMethods, ["pwd"]);
  const forged = await validateToken(app, `${login.session?.accessToken ?? ""}x`);
  assert.equal(forged.valid, false);
});

test("a wrong password is UNAUTHENTICATED with ErrorInfo INVALID_CREDENTIALS", async () => {
  const details = await failure(() => loginWithPassword(app, person.loginName, "Wrong-Password-123"));
  assert.equal(details.code, GrpcStatus.UNAUTHENTICATED);
  assertErrorInfo(details, "INVALID_CREDENTIALS");
});

test("the directory releases only granted fields, masking the phone", async () => {
  const grants = ["directory", "field:login_name", "field:phone", "purpose:order_fulfilment"];
  const shop = new IdentityServices(server.target, await createClient(app, grants));
  try {
    const fields = [IdentityField.IDENTITY_FIELD_LOGIN_NAME, IdentityField.IDENTITY_FIELD_PHONE];
    const identity = await getIdentity(shop, accountId, fields, "order_fulfilment");
    assert.equal(identity.accountId, accountId);
    assert.equal(identity.loginName, person.loginName);
    assert.equal(identity.phone, `139****${person.phone.slice(-4)}`);
    assert.deepEqual([...identity.released].sort(), [...fields].sort());
    assert.deepEqual(identity.masked, [IdentityField.IDENTITY_FIELD_PHONE]);

    // A field without a grant: PERMISSION_DENIED, ErrorInfo naming the grant.
    const refused = await failure(() =>
      getIdentity(shop, accountId, [IdentityField.IDENTITY_FIELD_ID_NUMBER], "order_fulfilment"),
    );
    assert.equal(refused.code, GrpcStatus.PERMISSION_DENIED);
    assertErrorInfo(refused, "PERMISSION_DENIED");
    assert.equal(refused.errorInfo?.metadata["grant"], "field:id_number");

    // No purpose: INVALID_ARGUMENT with a BadRequest violation on `purpose`.
    const noPurpose = await failure(() => getIdentity(shop, accountId, fields, ""));
    assert.equal(noPurpose.code, GrpcStatus.INVALID_ARGUMENT);
    assert.deepEqual(badFields(noPurpose), ["purpose"]);
  } finally {
    shop.close();
  }
});

test("a malformed phone is INVALID_ARGUMENT with BadRequest on `destination`", async () => {
  const details = await failure(() => issueCode("not-a-phone"));
  assert.equal(details.code, GrpcStatus.INVALID_ARGUMENT);
  assertErrorInfo(details, "INVALID_ARGUMENT");
  assert.deepEqual(badFields(details), ["destination"]);
  assert.match(details.badRequest?.fieldViolations[0]?.description ?? "", /\S/);
  assert.equal(details.retryInfo, undefined);
});

test("codes to one phone in a row are RESOURCE_EXHAUSTED with RetryInfo and QuotaFailure", async () => {
  const phone = freshPhone();
  await issueCode(phone);
  const details = await failure(() => issueCode(phone));
  assert.equal(details.code, GrpcStatus.RESOURCE_EXHAUSTED);
  assertErrorInfo(details, "RATE_LIMITED");
  const wait = retryAfterSeconds(details);
  assert.ok(wait !== undefined && wait > 0 && wait <= 60, `retry after ${String(wait)} s`);
  const violations = details.quotaFailure?.violations ?? [];
  assert.equal(violations.length, 1);
  assert.match(violations[0]?.subject ?? "", /^code\.issue\./);
  assert.equal(details.badRequest, undefined);
});
