/**
 * Development-only steps of the Node test: configuration from the environment, reading
 * a code from the dev SMS outbox, registering a person and creating a business client.
 */
import { readFile } from "node:fs/promises";
import { randomBytes, randomInt } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import { type ClientCredentials, IdentityServices } from "../src/example";
import { RegisterRequest } from "../src/gen/xiaohe/identity/v1/accounts";
import { CreateClientRequest } from "../src/gen/xiaohe/identity/v1/admin";
import { IssueCodeRequest, VerifyCodeRequest } from "../src/gen/xiaohe/identity/v1/codes";
import { Channel, Purpose, SubjectType } from "../src/gen/xiaohe/identity/v1/common";
import { GetPolicyRequest } from "../src/gen/xiaohe/identity/v1/privacy";

/** Where the served instance is: set by tests/e2e/test_node_client.py. */
export interface DevServer {
  target: string;
  bootstrap: ClientCredentials;
  /** The dev provider's SMS outbox (`<data dir>/outbox/sms.jsonl`). */
  outbox: string;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set (run through tests/e2e/test_node_client.py)`);
  }
  return value;
}

/** The server, bootstrap client and outbox named by XIAOHE_TARGET, XIAOHE_CLIENT_ID, ... */
export function devServerFromEnv(): DevServer {
  return {
    target: required("XIAOHE_TARGET"),
    bootstrap: { clientId: required("XIAOHE_CLIENT_ID"), clientSecret: required("XIAOHE_CLIENT_SECRET") },
    outbox: required("XIAOHE_OUTBOX"),
  };
}

/** A mainland mobile number nobody else in this run uses. */
export function freshPhone(): string {
  return `+86139${String(randomInt(0, 100_000_000)).padStart(8, "0")}`;
}

/** A login name nobody else in this run uses. */
export function freshLoginName(): string {
  return `node_${randomBytes(4).toString("hex")}`;
}

/** The newest code of `purpose` the dev provider wrote for `phone`, waiting up to 10 s. */
export async function codeFromOutbox(outbox: string, phone: string, purpose: string): Promise<string> {
  for (let attempt = 0; attempt < 100; attempt += 1) {
    const text = await readFile(outbox, "utf8").catch(() => "");
    const complete = text.slice(0, text.lastIndexOf("\n") + 1); // a line being written is not yet one
    for (const line of complete.split("\n").filter(Boolean).reverse()) {
      const message = JSON.parse(line) as { to: string; purpose: string; text: string };
      const code = /\d{6}/.exec(message.text);
      if (message.to === phone && message.purpose === purpose && code) {
        return code[0];
      }
    }
    await sleep(100);
  }
  throw new Error("no code in the dev outbox");
}

/** Register a natural person with a verified phone; returns the account id. */
export async function registerPerson(
  services: IdentityServices,
  outbox: string,
  person: { loginName: string; password: string; phone: string },
): Promise<string> {
  const codes = services.codes;
  const destination = { channel: Channel.CHANNEL_SMS, destination: person.phone, purpose: Purpose.PURPOSE_REGISTER };
  await services.call(codes.issueCode.bind(codes), IssueCodeRequest.fromPartial(destination));
  const code = await codeFromOutbox(outbox, person.phone, "REGISTER");
  const verified = await services.call(codes.verifyCode.bind(codes), VerifyCodeRequest.fromPartial({ ...destination, code }));
  const policy = await services.call(services.privacy.getPolicy.bind(services.privacy), GetPolicyRequest.fromPartial({}));
  const registered = await services.call(
    services.accounts.register.bind(services.accounts),
    RegisterRequest.fromPartial({
      subjectType: SubjectType.SUBJECT_TYPE_NATURAL_PERSON,
      loginName: person.loginName,
      password: person.password,
      phone: person.phone,
      phoneTicket: verified.ticket,
      acceptedPolicyVersion: policy.version,
    }),
  );
  return registered.accountId;
}

/** An operator's step: a new API client with `grants`, made with the bootstrap client's admin grant. */
export async function createClient(services: IdentityServices, grants: string[]): Promise<ClientCredentials> {
  const created = await services.call(
    services.admin.createClient.bind(services.admin),
    CreateClientRequest.fromPartial({ name: `shop-${randomBytes(3).toString("hex")}`, grants }),
  );
  if (created.client === undefined) {
    throw new Error("CreateClient answered without a client");
  }
  return { clientId: created.client.clientId, clientSecret: created.clientSecret };
}
