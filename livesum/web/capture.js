// Microphone capture: getUserMedia -> AudioWorklet (worklet.js) -> 16 kHz s16le buffers to a callback.

export const TARGET_RATE = 16000;

/** The audio inputs the browser offers (labels appear once the page has had mic permission). */
export async function microphones() {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((device) => device.kind === "audioinput");
}

/** Starts capturing; `onFrame(ArrayBuffer)` gets 100 ms of 16 kHz mono s16le. Returns {rate, stop()}. */
export async function startCapture(deviceId, onFrame) {
  if (!navigator.mediaDevices?.getUserMedia) {
    throw new Error("this browser gives no microphone here (the page needs https:// or localhost)");
  }
  const audio = { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false };
  if (deviceId) audio.deviceId = { exact: deviceId };
  const stream = await navigator.mediaDevices.getUserMedia({ audio });
  const context = new AudioContext();
  const rate = context.sampleRate >= TARGET_RATE ? TARGET_RATE : context.sampleRate;
  await context.audioWorklet.addModule("/static/worklet.js");
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "livesum-downsampler", {
    numberOfInputs: 1, numberOfOutputs: 0, processorOptions: { targetRate: rate },
  });
  node.port.onmessage = (message) => onFrame(message.data);
  source.connect(node);
  if (context.state === "suspended") await context.resume();
  return {
    rate,
    async stop() {
      source.disconnect();
      node.port.onmessage = null;
      stream.getTracks().forEach((track) => track.stop());
      await context.close();
    },
  };
}
