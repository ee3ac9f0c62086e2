// AudioWorklet: the microphone at the context's rate -> 16 kHz mono s16le, posted in 100 ms buffers.
// Downsampling averages the input samples that fall in each output sample's span (a box low-pass,
// enough for speech into Whisper) and keeps its fractional position across blocks.
class Downsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.target = options.processorOptions.targetRate;
    this.ratio = sampleRate / this.target;            // input samples per output sample (>= 1)
    this.frame = Math.round(this.target / 10);         // 100 ms
    this.out = new Int16Array(this.frame);
    this.filled = 0;
    this.sum = 0;
    this.count = 0;
    this.position = 0;                                 // input samples consumed towards the next output sample
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const length = channels[0].length;
    for (let i = 0; i < length; i++) {
      let sample = 0;
      for (const channel of channels) sample += channel[i];
      this.sum += sample / channels.length;
      this.count += 1;
      this.position += 1;
      if (this.position >= this.ratio) {
        this.position -= this.ratio;
        const value = Math.max(-1, Math.min(1, this.sum / this.count));
        this.out[this.filled++] = value < 0 ? value * 0x8000 : value * 0x7fff;
        this.sum = 0;
        this.count = 0;
        if (this.filled === this.frame) {
          this.port.postMessage(this.out.buffer, [this.out.buffer]);
          this.out = new Int16Array(this.frame);
          this.filled = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("livesum-downsampler", Downsampler);
