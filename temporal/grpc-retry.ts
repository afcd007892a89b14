// The Temporal client's gRPC retry, safe against a connection closed while a retry waits.
//
// The SDK's retry interceptor (makeGrpcRetryInterceptor) retries a failed call (UNAVAILABLE and
// the like) from a timer. When the connection is closed before that timer fires, the retry's new
// call throws "Channel has been shut down" inside the timer: an uncaught exception that ends the
// process (a CLI that gave up waiting, a server shutting down while Temporal was briefly away).
// Here the retry's call is made through a guard: on a closed channel it is a call that at once
// ends with CANCELLED ("the connection was closed while a retry of this call waited"), which the
// retry does not retry, so the caller's promise is rejected and nothing is thrown elsewhere.
import { Metadata, status as grpcStatus, type Interceptor, type InterceptingListener, type StatusObject } from '@grpc/grpc-js';
import { defaultGrpcRetryOptions, makeGrpcRetryInterceptor } from '@temporalio/client';

type InterceptingCallInterface = ReturnType<Parameters<Interceptor>[1]>;

export const RETRY_AFTER_CLOSE = 'the connection was closed while a retry of this call waited';

/** A call that never reached a channel: it ends with CANCELLED as soon as it is started. */
function closedCall(reason: string): InterceptingCallInterface {
  return {
    start(_metadata: Metadata, listener?: Partial<InterceptingListener>) {
      const s: StatusObject = { code: grpcStatus.CANCELLED, details: `${RETRY_AFTER_CLOSE} (${reason})`, metadata: new Metadata() };
      setImmediate(() => listener?.onReceiveStatus?.(s));
    },
    sendMessage() {},
    sendMessageWithContext() {},
    startRead() {},
    halfClose() {},
    cancelWithStatus() {},
    getPeer: () => 'closed',
    setCredentials() {},
    getAuthContext: () => null,
  } as unknown as InterceptingCallInterface;
}

/** The SDK's default retry, whose later attempts cannot throw out of their timer. */
export function closeSafeRetryInterceptor(): Interceptor {
  const retry = makeGrpcRetryInterceptor(defaultGrpcRetryOptions());
  return (options, nextCall) => {
    let first = true;
    return retry(options, (opts) => {
      // The first attempt is made synchronously by the caller: an error there is theirs to see.
      if (first) {
        first = false;
        return nextCall(opts);
      }
      try {
        return nextCall(opts);
      } catch (err) {
        return closedCall(err instanceof Error ? err.message : String(err));
      }
    });
  };
}
