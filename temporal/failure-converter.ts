// With a payload codec on, failure messages and stack traces (which name VMs and paths) travel
// inside the encoded attributes, so the codec seals them too. Loaded by path: the workflow
// bundle, the workers' activities and every client use the same one.
import { DefaultFailureConverter } from '@temporalio/common';

export const failureConverter = new DefaultFailureConverter({ encodeCommonAttributes: true });
