// A workflow interceptor module, in the server worker's bundle only when payloads are encrypted:
// search attributes are indexed in plain text (no codec sees them), so the VM name hvprotect's
// workflows put in BackupVm is replaced by a marker before the commands leave the workflow.
// The name stays readable where the codec seals it (inputs, results, memo, summaries).
import type { WorkflowInterceptors } from '@temporalio/workflow';
import { SA } from './search-attribute-keys';
import { redactedSearchAttributePayloads } from './search-attribute-redaction';

export const interceptors = (): WorkflowInterceptors => ({
  internals: [
    {
      concludeActivation(input, next) {
        for (const command of input.commands) {
          for (const body of Object.values(command)) {
            const fields = (body as { searchAttributes?: { indexedFields?: Record<string, unknown> } } | null)?.searchAttributes?.indexedFields;
            if (fields) redactedSearchAttributePayloads(fields as Record<string, { metadata?: Record<string, Uint8Array> | null; data?: Uint8Array | null }>, [SA.vm.name]);
          }
        }
        return next(input);
      },
    },
  ],
});
