/**
 * A small typed Xiaohe Identity client over the generated stubs (`make protos`):
 * password login, token validation and a directory lookup, with @grpc/grpc-js.
 *
 * Every call carries the API client's credentials (`x-client-id`, `x-client-secret`)
 * and a deadline; a failure rejects with the grpc-js ServiceError, whose details
 * `errorDetails()` (./errors) decodes.
 */
import {
  type CallOptions,
  type ClientOptions,
  type ClientUnaryCall,
  credentials as grpcCredentials,
  Metadata,
  type ServiceError,
} from "@grpc/grpc-js";

import { AccountServiceClient } from "./gen/xiaohe/identity/v1/accounts";
import { AdminServiceClient } from "./gen/xiaohe/identity/v1/admin";
import {
  AuthServiceClient,
  LoginRequest,
  type LoginResponse,
  ValidateTokenRequest,
  type ValidateTokenResponse,
} from "./gen/xiaohe/identity/v1/auth";
import { CodeServiceClient } from "./gen/xiaohe/identity/v1/codes";
import {
  DirectoryServiceClient,
  GetIdentityRequest,
  type Identity,
  type IdentityField,
} from "./gen/xiaohe/identity/v1/directory";
import { PrivacyServiceClient } from "./gen/xiaohe/identity/v1/privacy";

/** An API client's credentials, as an operator hands them out (`xiaohe-identity clients create`). */
export interface ClientCredentials {
  clientId: string;
  clientSecret: string;
}

/** How long a call may take before it fails with DEADLINE_EXCEEDED. */
export const DEFAULT_TIMEOUT_MS = 10_000;

/** A unary method of a generated client, in its (request, metadata, options, callback) form. */
type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** One channel to the service and a stub per service this example uses. */
export class IdentityServices {
  readonly auth: AuthServiceClient;
  readonly codes: CodeServiceClient;
  readonly accounts: AccountServiceClient;
  readonly privacy: PrivacyServiceClient;
  readonly admin: AdminServiceClient;
  readonly directory: DirectoryServiceClient;
  private readonly credentials: ClientCredentials;

  /** Plaintext to `target` (host:port), as on a trusted network or in development. */
  constructor(target: string, credentials: ClientCredentials) {
    const channel = grpcCredentials.createInsecure();
    this.credentials = credentials;
    this.auth = new AuthServiceClient(target, channel);
    const shared: Partial<ClientOptions> = { channelOverride: this.auth.getChannel() };
    this.codes = new CodeServiceClient(target, channel, shared);
    this.accounts = new AccountServiceClient(target, channel, shared);
    this.privacy = new PrivacyServiceClient(target, channel, shared);
    this.admin = new AdminServiceClient(target, channel, shared);
    this.directory = new DirectoryServiceClient(target, channel, shared);
  }

  /** The client's credentials as call metadata. */
  metadata(): Metadata {
    const metadata = new Metadata();
    metadata.set("x-client-id", this.credentials.clientId);
    metadata.set("x-client-secret", this.credentials.clientSecret);
    return metadata;
  }

  /** Call a unary method with the credentials and a deadline; resolves with the response. */
  call<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Res> {
    return new Promise((resolve, reject) => {
      method(request, this.metadata(), { deadline: Date.now() + timeoutMs }, (error, response) => {
        if (error) {
          reject(error);
        } else {
          resolve(response);
        }
      });
    });
  }

  /** Close the shared channel. */
  close(): void {
    this.auth.close();
  }
}

/** Sign in with a login name, phone, ID number or USCC and a password. */
export function loginWithPassword(
  services: IdentityServices,
  identifier: string,
  password: string,
): Promise<LoginResponse> {
  const request = LoginRequest.fromPartial({ password: { identifier, password } });
  return services.call(services.auth.login.bind(services.auth), request);
}

/** Ask the service whether an access token is valid now (signature, expiry, revocation). */
export function validateToken(services: IdentityServices, accessToken: string): Promise<ValidateTokenResponse> {
  const request = ValidateTokenRequest.fromPartial({ accessToken });
  return services.call(services.auth.validateToken.bind(services.auth), request);
}

/** The identity fields the client is granted, for one of its declared purposes. */
export async function getIdentity(
  services: IdentityServices,
  accountId: string,
  fields: IdentityField[],
  purpose: string,
): Promise<Identity> {
  const request = GetIdentityRequest.fromPartial({ accountId, fields, purpose });
  const response = await services.call(services.directory.getIdentity.bind(services.directory), request);
  if (response.identity === undefined) {
    throw new Error("GetIdentity answered without an identity");
  }
  return response.identity;
}
